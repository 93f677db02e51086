//! mtrec-prep's library: MIND to the sharded Parquet of the mtrec data contract ([`prep`]), the
//! MIND-format synthetic data generator ([`synth`]), and the title tokenizer ([`tokenize`]) that
//! the ranking service (mtrec-serve) shares, so that a title added while it runs is tokenized as
//! prep tokenized the shards; [`ebnerd`] writes the synthetic data in EB-NeRD's files.

pub mod ebnerd;
pub mod prep;
pub mod staged;
pub mod synth;
pub mod tokenize;

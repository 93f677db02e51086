//! mtrec-prep's library: data sets to the sharded Parquet of the mtrec data contract — MIND and
//! xMIND ([`mind`]), EB-NeRD ([`ebnerd`]) — through the stages they share ([`news`], [`shards`]);
//! the MIND-format synthetic data generator ([`synth`]) and its EB-NeRD writer ([`ebnerd_synth`]);
//! and the title tokenizer ([`tokenize`]) that the ranking service (mtrec-serve) shares, so that a
//! title added while it runs is tokenized as prep tokenized the shards.

pub mod ebnerd;
pub mod ebnerd_synth;
pub mod mind;
pub mod news;
pub mod shards;
pub mod staged;
pub mod synth;
pub mod tokenize;

//! The mtrec data contract: the files `mtrec-prep` writes and `mtrec-worker` reads.
//!
//! This crate parses the MIND text formats ([`mind`]), fixes the layout of the shard files
//! ([`schema`]), writes them ([`write`]), reads them back into plain vectors ([`read`]), and assembles training batches
//! from them ([`batch`]: seeded negatives, rank slices of one global order, each news item once
//! with its occurrence count). It must not depend on torch:
//! turning these vectors into tensors is the worker's job, tokenizing titles is prep's.
//!
//! # The shards folder
//!
//! - `manifest.json` ([`Manifest`], loaded and verified by [`Manifest::load`]):
//!   `format_version` (1); `tokenizer_sha256` (sha256 hex of the model folder's `tokenizer.json`,
//!   or of `vocab.txt` where there is no `tokenizer.json`; see [`tokenizer_identity`]);
//!   `max_title_len` (word pieces per title, `[CLS]`/`[SEP]` included; default 30);
//!   `max_history` (default 50); `categories` / `subcategories` (index = id in `news.parquet`);
//!   `ner_scheme` (`"bio"`, `"typed"`, or `"none"`: no NER labels, titles from `--titles`) and `ner_tags` (`["O","B","I"]` for bio; index = tag id);
//!   `num_news` (nids `1..=num_news`, 0 is padding); `num_users` (users of train get
//!   `1..=num_users`, users seen only in dev/test get 0); `entity_dim` (100 for MIND; EB-NeRD
//!   has no entity vectors: 100, unused);
//!   `num_entities`; `files` (every file written: relative `path`, `rows`, `sha256`); `splits`
//!   (`train`/`dev`/`test`, each absent or `{impressions, labeled, shards}`, shards in input
//!   order); `prep_report` (per split: input lines or rows, unknown news dropped, impressions
//!   dropped, and for EB-NeRD impressions with null lists and users without a history row; NER
//!   occurrences, located by search, dropped, truncated; EB-NeRD's `ner_clusters` and those found
//!   in titles; news ids defined differently by two splits; elapsed seconds). The shards are the
//!   same whatever the data set (MIND, xMIND or EB-NeRD; see `data-prep/README.md`).
//! - `news.parquet`, one row per news, sorted by nid: `nid` int32 (1..=N, dense), `news_id` utf8,
//!   `category` int32, `subcategory` int32, `title` utf8, `input_ids` list<int32>
//!   (`[CLS] ... [SEP]`, at most `max_title_len` pieces), `ner_tags` list<int8> aligned to
//!   `input_ids` (-1 on special tokens; B on an entity occurrence's first piece, I on the rest, O
//!   elsewhere; all -1 where the data set says nothing of the title's entities: `ner_scheme`
//!   `none`, or EB-NeRD's null `ner_clusters`), `entities` list<int32> (rows of the entity
//!   table, 1-based, distinct, in order of
//!   first appearance in `title_entities`; entities without a vector are left out).
//! - `entity_embedding.parquet`: `row` int32 (1..=num_entities), `wikidata_id` utf8, `vector`
//!   list<float32> (`entity_dim` values).
//! - `train/part-NNNNN.parquet`: `impression_id` int64, `user` int32, `time` int64 (unix seconds,
//!   UTC; EB-NeRD's timestamps carry no zone and are read as UTC), `history` list<int32> (nids,
//!   oldest first, the last `max_history` kept), `clicked`
//!   list<int32>, `non_clicked` list<int32>.
//! - `dev/part-NNNNN.parquet`, `test/part-NNNNN.parquet`: `impression_id`, `user`, `time`,
//!   `history` as in train, `candidates` list<int32> (original order), `labels` list<int8>
//!   (nullable: null where the split has no labels, like MIND-large test).
//!
//! Shards of a split concatenated in manifest order give the impressions in the order of the
//! input `behaviors.tsv` (or `behaviors.parquet`).
//!
//! Outside the shards folder, `mtrec-worker embed` writes vector files ([`vectors`]): news
//! vectors (`news_id`, `vector`) or user vectors (`impression_id`, `vector`), stamped with the
//! checkpoint they come from.

pub mod batch;
pub mod error;
pub mod manifest;
pub mod mind;
pub mod read;
pub mod schema;
pub mod vectors;
pub mod write;

pub use error::DataError;
pub use manifest::{
    FORMAT_VERSION, FileEntry, MANIFEST_FILE, Manifest, NerScheme, PrepReport, Split, SplitInfo, SplitReport,
    Splits, sha256_file, tokenizer_identity,
};
pub use read::{
    EvalImpression, NewsTable, TrainImpression, read_entity_vectors, read_eval, read_news, read_train,
};

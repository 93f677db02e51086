//! Readers of the shard files into plain vectors (the worker turns them into tensors).

use std::fs::File;
use std::path::Path;

use arrow::array::{Array, ArrayRef, AsArray, ListArray, PrimitiveArray, RecordBatch};
use arrow::datatypes::{ArrowPrimitiveType, Float32Type, Int8Type, Int32Type, Int64Type, SchemaRef};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::manifest::{Manifest, Split};
pub use crate::schema::{EvalImpression, TrainImpression};
use crate::schema::{entity_schema, eval_schema, news_schema, train_schema};
use crate::{DataError, MANIFEST_FILE};

/// `news.parquet` in memory, indexed by nid; index 0 is the padding entry (empty title, no
/// tokens, category and subcategory 0, no entities).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NewsTable {
    /// MIND news id (`""` at 0).
    pub news_id: Vec<String>,
    /// Category id.
    pub category: Vec<i64>,
    /// Subcategory id.
    pub subcategory: Vec<i64>,
    /// Word-piece ids, `[CLS] ... [SEP]`.
    pub input_ids: Vec<Vec<i32>>,
    /// NER tag per piece (-1 on special tokens).
    pub ner_tags: Vec<Vec<i8>>,
    /// Entity rows (1-based) into the entity table.
    pub entities: Vec<Vec<i32>>,
}

impl NewsTable {
    /// A table holding only the padding entry (nid 0: empty title, category 0, no entities).
    pub fn with_padding() -> Self {
        NewsTable {
            news_id: vec![String::new()],
            category: vec![0],
            subcategory: vec![0],
            input_ids: vec![Vec::new()],
            ner_tags: vec![Vec::new()],
            entities: vec![Vec::new()],
        }
    }

    /// Number of entries, padding included (`num_news + 1`).
    pub fn len(&self) -> usize {
        self.news_id.len()
    }

    /// True when not even the padding entry is present.
    pub fn is_empty(&self) -> bool {
        self.news_id.is_empty()
    }
}

/// Opens a shard, checks that its schema is the contract's, and returns its record batches
/// one at a time.
pub(crate) fn batches(
    path: &Path,
    expected: &SchemaRef,
) -> Result<impl Iterator<Item = Result<RecordBatch, DataError>> + use<>, DataError> {
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|error| DataError::Parquet { path: path.to_path_buf(), error })?;
    let found = builder.schema().clone();
    for field in expected.fields() {
        let Ok(actual) = found.field_with_name(field.name()) else {
            return Err(DataError::Schema {
                path: path.to_path_buf(),
                field: field.name().clone(),
                reason: "missing".into(),
            });
        };
        if !actual.data_type().equals_datatype(field.data_type()) {
            return Err(DataError::Schema {
                path: path.to_path_buf(),
                field: field.name().clone(),
                reason: format!("expected {}, found {}", field.data_type(), actual.data_type()),
            });
        }
    }
    let reader = builder
        .with_batch_size(8192)
        .build()
        .map_err(|error| DataError::Parquet { path: path.to_path_buf(), error })?;
    let path = path.to_path_buf();
    Ok(reader.map(move |b| b.map_err(|error| DataError::Arrow { path: path.clone(), error })))
}

/// One column of a batch whose types [`batches`] checked.
pub(crate) fn column<'a>(path: &Path, b: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef, DataError> {
    b.column_by_name(name).ok_or_else(|| DataError::Schema {
        path: path.to_path_buf(),
        field: name.to_string(),
        reason: "missing".into(),
    })
}

pub(crate) fn prim<'a, T: ArrowPrimitiveType>(
    path: &Path,
    b: &'a RecordBatch,
    name: &str,
) -> Result<&'a PrimitiveArray<T>, DataError> {
    Ok(column(path, b, name)?.as_primitive::<T>())
}

pub(crate) fn list<'a>(path: &Path, b: &'a RecordBatch, name: &str) -> Result<&'a ListArray, DataError> {
    Ok(column(path, b, name)?.as_list::<i32>())
}

fn list_values<T: ArrowPrimitiveType>(l: &ListArray, row: usize) -> Vec<T::Native> {
    let v = l.value(row);
    v.as_primitive::<T>().values().to_vec()
}

/// Reads `news.parquet` into a [`NewsTable`], checking that nids are `1, 2, ...` in order.
pub fn read_news(shards_dir: &Path) -> Result<NewsTable, DataError> {
    let path = shards_dir.join("news.parquet");
    let mut t = NewsTable::with_padding();
    for batch in batches(&path, &news_schema())? {
        let b = batch?;
        let nid = prim::<Int32Type>(&path, &b, "nid")?;
        let news_id = column(&path, &b, "news_id")?.as_string::<i32>();
        let category = prim::<Int32Type>(&path, &b, "category")?;
        let subcategory = prim::<Int32Type>(&path, &b, "subcategory")?;
        let (input_ids, ner_tags, entities) =
            (list(&path, &b, "input_ids")?, list(&path, &b, "ner_tags")?, list(&path, &b, "entities")?);
        for r in 0..b.num_rows() {
            let row = t.len() - 1;
            if nid.value(r) as i64 != t.len() as i64 {
                return Err(DataError::Invalid {
                    path,
                    row,
                    field: "nid".into(),
                    reason: format!(
                        "expected {}, found {} (nids must be dense and sorted)",
                        t.len(),
                        nid.value(r)
                    ),
                });
            }
            let ids = list_values::<Int32Type>(input_ids, r);
            let tags = list_values::<Int8Type>(ner_tags, r);
            if ids.len() != tags.len() {
                return Err(DataError::Invalid {
                    path,
                    row,
                    field: "ner_tags".into(),
                    reason: format!("{} tags for {} input_ids", tags.len(), ids.len()),
                });
            }
            t.news_id.push(news_id.value(r).to_string());
            t.category.push(category.value(r).into());
            t.subcategory.push(subcategory.value(r).into());
            t.input_ids.push(ids);
            t.ner_tags.push(tags);
            t.entities.push(list_values::<Int32Type>(entities, r));
        }
    }
    Ok(t)
}

impl NewsTable {
    /// Refuses a value outside its vocabulary, naming `news.parquet`'s row and column: a
    /// category, subcategory or NER tag the manifest does not list, an entity row beyond the
    /// entity table, a word-piece id beyond the model's `vocab_size`. The model would index out
    /// of range (a panic on the CPU, a device-side assert on CUDA).
    pub fn check_ranges(
        &self,
        shards_dir: &Path,
        manifest: &Manifest,
        vocab_size: i64,
    ) -> Result<(), DataError> {
        let path = shards_dir.join("news.parquet");
        let invalid = |nid: usize, field: &str, reason: String| DataError::Invalid {
            path: path.clone(),
            row: nid - 1,
            field: field.into(),
            reason,
        };
        let (categories, subcategories) =
            (manifest.categories.len() as i64, manifest.subcategories.len() as i64);
        let tags = manifest.ner_tags.len() as i64;
        for nid in 1..self.len() {
            if !(0..categories).contains(&self.category[nid]) {
                let reason =
                    format!("{} is outside the manifest's {categories} categories", self.category[nid]);
                return Err(invalid(nid, "category", reason));
            }
            if !(0..subcategories).contains(&self.subcategory[nid]) {
                let reason = format!(
                    "{} is outside the manifest's {subcategories} subcategories",
                    self.subcategory[nid]
                );
                return Err(invalid(nid, "subcategory", reason));
            }
            if let Some(&id) =
                self.input_ids[nid].iter().find(|&&id| !(0..vocab_size).contains(&i64::from(id)))
            {
                let reason = format!("token id {id} is outside the model's vocabulary of {vocab_size}");
                return Err(invalid(nid, "input_ids", reason));
            }
            if let Some(&tag) = self.ner_tags[nid].iter().find(|&&t| !(-1..tags).contains(&i64::from(t))) {
                let reason = format!("tag {tag} is outside -1 and the manifest's {tags} NER tags");
                return Err(invalid(nid, "ner_tags", reason));
            }
            let entities = manifest.num_entities as i64;
            if let Some(&row) = self.entities[nid].iter().find(|&&e| !(1..=entities).contains(&i64::from(e)))
            {
                let reason = format!("entity row {row} is outside 1..={entities}");
                return Err(invalid(nid, "entities", reason));
            }
        }
        Ok(())
    }
}

/// Reads `entity_embedding.parquet`: `(dim, vectors)` with `vectors` row-major
/// `(num_entities + 1) x dim` and row 0 all zeros (padding). `dim` comes from `manifest.json`.
pub fn read_entity_vectors(shards_dir: &Path) -> Result<(usize, Vec<f32>), DataError> {
    let dim = Manifest::load_unverified(shards_dir)?.entity_dim as usize;
    let path = shards_dir.join("entity_embedding.parquet");
    let mut out = vec![0.0f32; dim];
    let mut rows = 0usize;
    for batch in batches(&path, &entity_schema())? {
        let b = batch?;
        let row = prim::<Int32Type>(&path, &b, "row")?;
        let vector = list(&path, &b, "vector")?;
        for r in 0..b.num_rows() {
            rows += 1;
            let bad = |field: &str, reason: String| DataError::Invalid {
                path: path.clone(),
                row: rows - 1,
                field: field.into(),
                reason,
            };
            if row.value(r) as usize != rows {
                return Err(bad("row", format!("expected {rows}, found {}", row.value(r))));
            }
            let v = vector.value(r);
            let v = v.as_primitive::<Float32Type>();
            if v.len() != dim {
                return Err(bad(
                    "vector",
                    format!("length {} but {MANIFEST_FILE} says entity_dim {dim}", v.len()),
                ));
            }
            out.extend_from_slice(v.values());
        }
    }
    Ok((dim, out))
}

fn shard_paths(
    manifest: &Manifest,
    split: Split,
    shards_dir: &Path,
) -> Result<Vec<std::path::PathBuf>, DataError> {
    let info = manifest.splits.get(split).ok_or_else(|| DataError::Manifest {
        path: shards_dir.join(MANIFEST_FILE),
        field: format!("splits.{}", split.name()),
        reason: "this split was not prepared".into(),
    })?;
    Ok(info.shards.iter().map(|s| shards_dir.join(s)).collect())
}

/// Refuses ids outside `range`: the worker indexes its tables by them (news ids `1..=num_news`,
/// users `0..=num_users`, 0 = unknown).
fn check_ids(
    path: &Path,
    row: usize,
    field: &str,
    ids: &[i32],
    range: &std::ops::RangeInclusive<i32>,
) -> Result<(), DataError> {
    match ids.iter().find(|id| !range.contains(id)) {
        None => Ok(()),
        Some(id) => Err(DataError::Invalid {
            path: path.to_path_buf(),
            row,
            field: field.into(),
            reason: format!("id {id} is outside {}..={} (manifest.json)", range.start(), range.end()),
        }),
    }
}

/// The news-id and user-id ranges of `manifest`.
fn id_ranges(manifest: &Manifest) -> (std::ops::RangeInclusive<i32>, std::ops::RangeInclusive<i32>) {
    let clamp = |n: u64| i32::try_from(n).unwrap_or(i32::MAX);
    (1..=clamp(manifest.num_news), 0..=clamp(manifest.num_users))
}

/// Reads every train shard, in shard order (= the order of `behaviors.tsv`).
pub fn read_train(shards_dir: &Path, manifest: &Manifest) -> Result<Vec<TrainImpression>, DataError> {
    let mut out = Vec::new();
    let (news_ids, user_ids) = id_ranges(manifest);
    for path in shard_paths(manifest, Split::Train, shards_dir)? {
        let mut file_row = 0usize;
        for batch in batches(&path, &train_schema())? {
            let b = batch?;
            let (id, user, time) = (
                prim::<Int64Type>(&path, &b, "impression_id")?,
                prim::<Int32Type>(&path, &b, "user")?,
                prim::<Int64Type>(&path, &b, "time")?,
            );
            let (history, clicked, non_clicked) =
                (list(&path, &b, "history")?, list(&path, &b, "clicked")?, list(&path, &b, "non_clicked")?);
            for r in 0..b.num_rows() {
                let imp = TrainImpression {
                    impression_id: id.value(r),
                    user: user.value(r),
                    time: time.value(r),
                    history: list_values::<Int32Type>(history, r),
                    clicked: list_values::<Int32Type>(clicked, r),
                    non_clicked: list_values::<Int32Type>(non_clicked, r),
                };
                check_ids(&path, file_row, "user", &[imp.user], &user_ids)?;
                check_ids(&path, file_row, "history", &imp.history, &news_ids)?;
                check_ids(&path, file_row, "clicked", &imp.clicked, &news_ids)?;
                check_ids(&path, file_row, "non_clicked", &imp.non_clicked, &news_ids)?;
                file_row += 1;
                out.push(imp);
            }
        }
    }
    Ok(out)
}

/// Reads every shard of `split` (`Dev` or `Test`), in the order of its `behaviors.tsv`.
pub fn read_eval(
    shards_dir: &Path,
    manifest: &Manifest,
    split: Split,
) -> Result<Vec<EvalImpression>, DataError> {
    if split == Split::Train {
        return Err(DataError::Manifest {
            path: shards_dir.join(MANIFEST_FILE),
            field: "splits.train".into(),
            reason: "read_eval reads dev or test; use read_train for train".into(),
        });
    }
    let mut out = Vec::new();
    let (news_ids, user_ids) = id_ranges(manifest);
    for path in shard_paths(manifest, split, shards_dir)? {
        let mut file_row = 0usize;
        for batch in batches(&path, &eval_schema())? {
            let b = batch?;
            let (id, user, time) = (
                prim::<Int64Type>(&path, &b, "impression_id")?,
                prim::<Int32Type>(&path, &b, "user")?,
                prim::<Int64Type>(&path, &b, "time")?,
            );
            let (history, candidates, labels) =
                (list(&path, &b, "history")?, list(&path, &b, "candidates")?, list(&path, &b, "labels")?);
            for r in 0..b.num_rows() {
                let cands = list_values::<Int32Type>(candidates, r);
                let labs = (!labels.is_null(r)).then(|| list_values::<Int8Type>(labels, r));
                if let Some(l) = &labs
                    && l.len() != cands.len()
                {
                    return Err(DataError::Invalid {
                        path,
                        row: file_row,
                        field: "labels".into(),
                        reason: format!("{} labels for {} candidates", l.len(), cands.len()),
                    });
                }
                let imp = EvalImpression {
                    impression_id: id.value(r),
                    user: user.value(r),
                    time: time.value(r),
                    history: list_values::<Int32Type>(history, r),
                    candidates: cands,
                    labels: labs,
                };
                check_ids(&path, file_row, "user", &[imp.user], &user_ids)?;
                check_ids(&path, file_row, "history", &imp.history, &news_ids)?;
                check_ids(&path, file_row, "candidates", &imp.candidates, &news_ids)?;
                file_row += 1;
                out.push(imp);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{FORMAT_VERSION, FileEntry, NerScheme, PrepReport, SplitInfo, Splits, sha256_file};
    use crate::write::{EntityWriter, EvalWriter, NewsRow, NewsWriter, TrainWriter};

    #[test]
    fn write_then_read_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mut w = NewsWriter::create(&d.join("news.parquet")).unwrap();
        let rows: Vec<NewsRow> = (1..=3)
            .map(|i| NewsRow {
                nid: i,
                news_id: format!("N{i}"),
                category: i % 2,
                subcategory: i,
                title: format!("title {i}"),
                input_ids: vec![101, 1000 + i, 102],
                ner_tags: vec![-1, 1, -1],
                entities: (1..i).collect(),
            })
            .collect();
        for r in &rows {
            w.push(r).unwrap();
        }
        assert_eq!(w.finish().unwrap(), 3);
        let mut e = EntityWriter::create(&d.join("entity_embedding.parquet")).unwrap();
        e.push("Q1", &[1.0, 2.0]);
        e.push("Q2", &[3.0, 4.0]);
        assert_eq!(e.finish().unwrap(), 2);
        std::fs::create_dir_all(d.join("train")).unwrap();
        std::fs::create_dir_all(d.join("test")).unwrap();
        let train = TrainImpression {
            impression_id: 9,
            user: 1,
            time: 5,
            history: vec![1],
            clicked: vec![2],
            non_clicked: vec![3, 1],
        };
        let mut t = TrainWriter::create(&d.join("train/part-00000.parquet")).unwrap();
        t.push(&train).unwrap();
        assert_eq!(t.finish().unwrap(), 1);
        let mut v = EvalWriter::create(&d.join("test/part-00000.parquet")).unwrap();
        let labeled = EvalImpression {
            impression_id: 1,
            user: 0,
            time: 6,
            history: vec![],
            candidates: vec![2, 3],
            labels: Some(vec![0, 1]),
        };
        let unlabeled = EvalImpression { labels: None, impression_id: 2, ..labeled.clone() };
        v.push(&labeled).unwrap();
        v.push(&unlabeled).unwrap();
        assert_eq!(v.finish().unwrap(), 2);
        let entry =
            |p: &str, rows| FileEntry { path: p.into(), rows, sha256: sha256_file(&d.join(p)).unwrap() };
        let manifest = Manifest {
            format_version: FORMAT_VERSION,
            tokenizer_sha256: String::new(),
            max_title_len: 30,
            max_history: 50,
            categories: vec!["a".into(), "b".into()],
            subcategories: vec![],
            ner_scheme: NerScheme::Bio,
            ner_tags: vec!["O".into(), "B".into(), "I".into()],
            num_news: 3,
            num_users: 1,
            entity_dim: 2,
            num_entities: 2,
            files: vec![
                entry("news.parquet", 3),
                entry("entity_embedding.parquet", 2),
                entry("train/part-00000.parquet", 1),
                entry("test/part-00000.parquet", 2),
            ],
            splits: Splits {
                train: Some(SplitInfo {
                    impressions: 1,
                    labeled: true,
                    shards: vec!["train/part-00000.parquet".into()],
                }),
                dev: None,
                test: Some(SplitInfo {
                    impressions: 2,
                    labeled: true,
                    shards: vec!["test/part-00000.parquet".into()],
                }),
            },
            prep_report: PrepReport::default(),
        };
        std::fs::write(d.join(MANIFEST_FILE), serde_json::to_string(&manifest).unwrap()).unwrap();
        let m = Manifest::load(d).unwrap();

        let news = read_news(d).unwrap();
        assert_eq!(news.len(), 4);
        assert_eq!(news.news_id, ["", "N1", "N2", "N3"]);
        assert_eq!(news.category, [0, 1, 0, 1]);
        assert_eq!(news.input_ids[2], [101, 1002, 102]);
        assert_eq!(news.ner_tags[3], [-1, 1, -1]);
        assert_eq!(news.entities[3], [1, 2]);
        assert_eq!(read_entity_vectors(d).unwrap(), (2, vec![0.0, 0.0, 1.0, 2.0, 3.0, 4.0]));
        let tr = read_train(d, &m).unwrap();
        assert_eq!(
            tr,
            vec![TrainImpression {
                impression_id: 9,
                user: 1,
                time: 5,
                history: vec![1],
                clicked: vec![2],
                non_clicked: vec![3, 1]
            }]
        );
        let te = read_eval(d, &m, Split::Test).unwrap();
        assert_eq!(te[0].labels, Some(vec![0, 1]));
        assert_eq!(te[1].labels, None);
        assert_eq!(te[1].candidates, [2, 3]);
        // What is read is exactly what was written: one row type serves both directions.
        assert_eq!(te, vec![labeled, unlabeled]);
        assert_eq!(tr, vec![train]);
        assert!(read_eval(d, &m, Split::Dev).unwrap_err().to_string().contains("splits.dev"));
        assert!(read_eval(d, &m, Split::Train).is_err());

        // Ids the tables do not have are refused by row and column, not left to panic later.
        let fewer_news = Manifest { num_news: 2, ..m.clone() };
        let err = read_train(d, &fewer_news).unwrap_err().to_string();
        assert!(err.contains("row 0: `non_clicked`: id 3 is outside 1..=2"), "{err}");
        let err = read_eval(d, &fewer_news, Split::Test).unwrap_err().to_string();
        assert!(err.contains("row 0: `candidates`: id 3 is outside 1..=2"), "{err}");
        let no_users = Manifest { num_users: 0, ..m.clone() };
        let err = read_train(d, &no_users).unwrap_err().to_string();
        assert!(err.contains("row 0: `user`: id 1 is outside 0..=0"), "{err}");
    }

    #[test]
    fn read_news_rejects_non_dense_nids_and_wrong_types() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = NewsWriter::create(&dir.path().join("news.parquet")).unwrap();
        let row = NewsRow {
            nid: 2,
            news_id: "N2".into(),
            category: 0,
            subcategory: 0,
            title: String::new(),
            input_ids: vec![],
            ner_tags: vec![],
            entities: vec![],
        };
        w.push(&row).unwrap();
        w.finish().unwrap();
        let err = read_news(dir.path()).unwrap_err().to_string();
        assert!(err.contains("row 0: `nid`: expected 1, found 2"), "{err}");
        // A train shard is not a news file.
        let mut t = TrainWriter::create(&dir.path().join("news.parquet")).unwrap();
        t.push(&TrainImpression {
            impression_id: 1,
            user: 1,
            time: 0,
            history: vec![],
            clicked: vec![],
            non_clicked: vec![],
        })
        .unwrap();
        t.finish().unwrap();
        let err = read_news(dir.path()).unwrap_err().to_string();
        assert!(err.contains("column `nid`: missing"), "{err}");
    }
}

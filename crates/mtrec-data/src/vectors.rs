//! The vector files of `mtrec-worker embed`: one news vector per news item (`news_id` utf8,
//! `vector` list<float32>), or with `--users` one user vector per impression (`impression_id`
//! int64, `vector` list<float32>). Both carry where their vectors come from ([`VectorSource`],
//! in the Arrow schema's metadata), so that a reader (the ranking service) can refuse vectors of
//! another model than its own.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayBuilder, ArrayRef, AsArray, Float32Builder, Int64Builder, ListBuilder, StringBuilder,
};
use arrow::datatypes::{DataType, Field, Float32Type, Schema, SchemaRef};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::DataError;
use crate::read::{batches, column, list};
use crate::schema::list_of;
use crate::write::{Sink, write_atomically};

/// The model the vectors were computed with: a training checkpoint's `model.safetensors`
/// (its sha256, as `trainer.json` records it) under a config of the given model-shape digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VectorSource {
    pub model_sha256: String,
    pub config_digest: String,
}

const MODEL_SHA256_KEY: &str = "mtrec.model_sha256";
const CONFIG_DIGEST_KEY: &str = "mtrec.config_digest";

impl VectorSource {
    fn to_metadata(source: Option<&VectorSource>) -> HashMap<String, String> {
        source.map_or_else(HashMap::new, |s| {
            HashMap::from([
                (MODEL_SHA256_KEY.to_string(), s.model_sha256.clone()),
                (CONFIG_DIGEST_KEY.to_string(), s.config_digest.clone()),
            ])
        })
    }

    fn from_metadata(metadata: &HashMap<String, String>) -> Option<VectorSource> {
        Some(VectorSource {
            model_sha256: metadata.get(MODEL_SHA256_KEY)?.clone(),
            config_digest: metadata.get(CONFIG_DIGEST_KEY)?.clone(),
        })
    }
}

/// Schema of the news-vector file (without its metadata).
pub fn news_vector_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("news_id", DataType::Utf8, false),
        Field::new("vector", list_of(DataType::Float32), false),
    ]))
}

/// Schema of the user-vector file (without its metadata).
pub fn user_vector_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("impression_id", DataType::Int64, false),
        Field::new("vector", list_of(DataType::Float32), false),
    ]))
}

/// Writes `(news_id, vector)` rows of width `dim` to `path` ([`write_atomically`]: a failed run
/// leaves no half-written file). Returns the rows written.
pub fn write_news_vectors<'a>(
    path: &Path,
    dim: usize,
    source: Option<&VectorSource>,
    rows: impl Iterator<Item = (&'a str, &'a [f32])>,
) -> Result<u64, DataError> {
    write_vectors(path, news_vector_schema(), dim, source, rows, StringBuilder::new())
}

/// Writes `(impression_id, vector)` rows of width `dim` to `path`, as [`write_news_vectors`].
pub fn write_user_vectors<'a>(
    path: &Path,
    dim: usize,
    source: Option<&VectorSource>,
    rows: impl Iterator<Item = (i64, &'a [f32])>,
) -> Result<u64, DataError> {
    write_vectors(path, user_vector_schema(), dim, source, rows, Int64Builder::new())
}

/// The key column of a vector file being built.
trait KeyColumn<K> {
    fn push(&mut self, key: K);
    fn take(&mut self) -> ArrayRef;
}

impl KeyColumn<&str> for StringBuilder {
    fn push(&mut self, key: &str) {
        self.append_value(key);
    }
    fn take(&mut self) -> ArrayRef {
        Arc::new(self.finish())
    }
}

impl KeyColumn<i64> for Int64Builder {
    fn push(&mut self, key: i64) {
        self.append_value(key);
    }
    fn take(&mut self) -> ArrayRef {
        Arc::new(self.finish())
    }
}

/// Rows per record batch of a vector file.
const BATCH_ROWS: usize = 8192;

fn write_vectors<'a, K>(
    path: &Path,
    schema: SchemaRef,
    dim: usize,
    source: Option<&VectorSource>,
    rows: impl Iterator<Item = (K, &'a [f32])>,
    mut keys: impl KeyColumn<K>,
) -> Result<u64, DataError> {
    let schema = Arc::new(Schema::clone(&schema).with_metadata(VectorSource::to_metadata(source)));
    write_atomically(path, |tmp| {
        let mut sink = Sink::create(tmp, schema)?;
        let mut vectors = ListBuilder::new(Float32Builder::new());
        for (row, (key, vector)) in rows.enumerate() {
            if vector.len() != dim {
                return Err(DataError::Invalid {
                    path: path.to_path_buf(),
                    row,
                    field: "vector".into(),
                    reason: format!("{} values, the file's vectors have {dim}", vector.len()),
                });
            }
            keys.push(key);
            vectors.append_value(vector.iter().map(|&v| Some(v)));
            if vectors.len() == BATCH_ROWS {
                sink.write(vec![keys.take(), Arc::new(vectors.finish())])?;
            }
        }
        sink.write(vec![keys.take(), Arc::new(vectors.finish())])?;
        sink.close()
    })
}

/// A vector file read back: row `i` of `values` (`dim` floats each) belongs to `keys[i]`.
#[derive(Debug)]
pub struct Vectors<K> {
    pub keys: Vec<K>,
    pub dim: usize,
    pub values: Vec<f32>,
    /// `None` for a file written without a checkpoint (pretrained weights).
    pub source: Option<VectorSource>,
}

/// Where the vectors of a vector file come from, from its footer alone (`None`: written
/// without a checkpoint).
pub fn read_vector_source(path: &Path) -> Result<Option<VectorSource>, DataError> {
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|error| DataError::Parquet { path: path.to_path_buf(), error })?;
    Ok(VectorSource::from_metadata(builder.schema().metadata()))
}

/// Reads a file written by [`write_news_vectors`]; every vector must have the same width.
pub fn read_news_vectors(path: &Path) -> Result<Vectors<String>, DataError> {
    read_vectors(path, news_vector_schema(), |b, r| {
        Ok(column(path, b, "news_id")?.as_string::<i32>().value(r).to_string())
    })
}

/// Reads a file written by [`write_user_vectors`]; every vector must have the same width.
pub fn read_user_vectors(path: &Path) -> Result<Vectors<i64>, DataError> {
    read_vectors(path, user_vector_schema(), |b, r| {
        Ok(crate::read::prim::<arrow::datatypes::Int64Type>(path, b, "impression_id")?.value(r))
    })
}

fn read_vectors<K>(
    path: &Path,
    schema: SchemaRef,
    key: impl Fn(&arrow::record_batch::RecordBatch, usize) -> Result<K, DataError>,
) -> Result<Vectors<K>, DataError> {
    let source = read_vector_source(path)?;
    let mut out = Vectors { keys: Vec::new(), dim: 0, values: Vec::new(), source };
    for batch in batches(path, &schema)? {
        let b = batch?;
        let vectors = list(path, &b, "vector")?;
        for r in 0..b.num_rows() {
            let vector = vectors.value(r);
            let vector = vector.as_primitive::<Float32Type>();
            let row = out.keys.len();
            if row == 0 {
                out.dim = vector.len();
            }
            if vector.len() != out.dim || vector.null_count() > 0 {
                return Err(DataError::Invalid {
                    path: path.to_path_buf(),
                    row,
                    field: "vector".into(),
                    reason: format!(
                        "{} values ({} null), the first row has {}",
                        vector.len(),
                        vector.null_count(),
                        out.dim
                    ),
                });
            }
            out.keys.push(key(&b, r)?);
            out.values.extend_from_slice(vector.values());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vector_of_the_wrong_width_fails_and_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vectors.parquet");
        let (good, short) = ([1.0f32, 2.0, 3.0], [1.0f32, 2.0]);
        let rows = [("N1", &good[..]), ("N2", &short[..])];
        let err = write_news_vectors(&path, 3, None, rows.into_iter()).unwrap_err().to_string();
        assert!(err.contains("row 1: `vector`: 2 values, the file's vectors have 3"), "{err}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "no file and no temporary file");
        assert_eq!(write_news_vectors(&path, 3, None, [("N1", &good[..])].into_iter()).unwrap(), 1);
    }

    #[test]
    fn news_vectors_and_their_source_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let (path, bare) = (dir.path().join("v.parquet"), dir.path().join("bare.parquet"));
        let source = VectorSource { model_sha256: "ab12".into(), config_digest: "cd34".into() };
        let (a, b) = ([1.0f32, -2.0], [0.5f32, 4.0]);
        let rows = [("N7", &a[..]), ("N9", &b[..])];
        write_news_vectors(&path, 2, Some(&source), rows.into_iter()).unwrap();
        let read = read_news_vectors(&path).unwrap();
        assert_eq!(read.keys, ["N7", "N9"]);
        assert_eq!((read.dim, read.values), (2, vec![1.0, -2.0, 0.5, 4.0]));
        assert_eq!(read.source, Some(source.clone()));
        assert_eq!(read_vector_source(&path).unwrap(), Some(source.clone()));
        write_news_vectors(&bare, 2, None, rows.into_iter()).unwrap();
        assert_eq!(read_news_vectors(&bare).unwrap().source, None);
        let users = dir.path().join("users.parquet");
        write_user_vectors(&users, 2, Some(&source), [(11i64, &a[..]), (12, &b[..])].into_iter()).unwrap();
        let read = read_user_vectors(&users).unwrap();
        assert_eq!((read.keys, read.values), (vec![11, 12], vec![1.0, -2.0, 0.5, 4.0]));
    }
}

//! Parquet writers of the shard files, in the layout of [`crate::schema`] (the readers in
//! [`crate::read`] check files against the same schemas).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, Float32Builder, Int8Builder, Int32Builder, Int64Builder, ListBuilder, StringBuilder,
};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use crate::DataError;
use crate::schema::{EvalImpression, TrainImpression, entity_schema, eval_schema, news_schema, train_schema};

/// Rows buffered before a record batch goes to the Parquet writer.
const BATCH_ROWS: usize = 8192;
/// Rows per Parquet row group (bounds the writer's memory).
const ROW_GROUP_ROWS: usize = 65_536;

/// Shard file name of part `index` (`part-00000.parquet`).
pub fn part_name(index: usize) -> String {
    format!("part-{index:05}.parquet")
}

/// A Parquet file being written: batches in, row count checked at close.
pub(crate) struct Sink {
    path: PathBuf,
    schema: SchemaRef,
    writer: ArrowWriter<File>,
    rows: u64,
}

impl Sink {
    pub(crate) fn create(path: &Path, schema: SchemaRef) -> Result<Sink, DataError> {
        let file = File::create(path).map_err(|e| DataError::io(path, e))?;
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_size(ROW_GROUP_ROWS)
            .build();
        let writer = ArrowWriter::try_new(file, schema.clone(), Some(props))
            .map_err(|error| DataError::Parquet { path: path.to_path_buf(), error })?;
        Ok(Sink { path: path.to_path_buf(), schema, writer, rows: 0 })
    }

    pub(crate) fn write(&mut self, columns: Vec<ArrayRef>) -> Result<(), DataError> {
        let batch = RecordBatch::try_new(self.schema.clone(), columns)
            .map_err(|error| DataError::Arrow { path: self.path.clone(), error })?;
        if batch.num_rows() == 0 {
            return Ok(());
        }
        self.rows += batch.num_rows() as u64;
        self.writer.write(&batch).map_err(|error| DataError::Parquet { path: self.path.clone(), error })
    }

    pub(crate) fn close(self) -> Result<u64, DataError> {
        let meta =
            self.writer.close().map_err(|error| DataError::Parquet { path: self.path.clone(), error })?;
        let written = meta.file_metadata().num_rows() as u64;
        if written != self.rows {
            return Err(DataError::Invalid {
                path: self.path,
                row: 0,
                field: "(file)".into(),
                reason: format!("wrote {} rows but the footer says {written}", self.rows),
            });
        }
        Ok(written)
    }
}

/// One row of `news.parquet`.
#[derive(Debug, Clone, PartialEq)]
pub struct NewsRow {
    /// Dense id, `1..=num_news`, written in increasing order.
    pub nid: i32,
    /// MIND news id.
    pub news_id: String,
    /// Category id.
    pub category: i32,
    /// Subcategory id.
    pub subcategory: i32,
    /// Title text.
    pub title: String,
    /// Word-piece ids, `[CLS] ... [SEP]`.
    pub input_ids: Vec<i32>,
    /// NER tag id per piece, -1 on special tokens.
    pub ner_tags: Vec<i8>,
    /// Entity rows (1-based) in order of first appearance.
    pub entities: Vec<i32>,
}

/// Writes `news.parquet`.
pub struct NewsWriter {
    sink: Sink,
    nid: Int32Builder,
    news_id: StringBuilder,
    category: Int32Builder,
    subcategory: Int32Builder,
    title: StringBuilder,
    input_ids: ListBuilder<Int32Builder>,
    ner_tags: ListBuilder<Int8Builder>,
    entities: ListBuilder<Int32Builder>,
    pending: usize,
}

impl NewsWriter {
    /// Creates the file.
    pub fn create(path: &Path) -> Result<NewsWriter, DataError> {
        Ok(NewsWriter {
            sink: Sink::create(path, news_schema())?,
            nid: Int32Builder::new(),
            news_id: StringBuilder::new(),
            category: Int32Builder::new(),
            subcategory: Int32Builder::new(),
            title: StringBuilder::new(),
            input_ids: ListBuilder::new(Int32Builder::new()),
            ner_tags: ListBuilder::new(Int8Builder::new()),
            entities: ListBuilder::new(Int32Builder::new()),
            pending: 0,
        })
    }

    /// Appends one row.
    pub fn push(&mut self, row: &NewsRow) -> Result<(), DataError> {
        self.nid.append_value(row.nid);
        self.news_id.append_value(&row.news_id);
        self.category.append_value(row.category);
        self.subcategory.append_value(row.subcategory);
        self.title.append_value(&row.title);
        self.input_ids.append_value(row.input_ids.iter().map(|&v| Some(v)));
        self.ner_tags.append_value(row.ner_tags.iter().map(|&v| Some(v)));
        self.entities.append_value(row.entities.iter().map(|&v| Some(v)));
        self.pending += 1;
        if self.pending >= BATCH_ROWS { self.flush() } else { Ok(()) }
    }

    fn flush(&mut self) -> Result<(), DataError> {
        self.pending = 0;
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.nid.finish()),
            Arc::new(self.news_id.finish()),
            Arc::new(self.category.finish()),
            Arc::new(self.subcategory.finish()),
            Arc::new(self.title.finish()),
            Arc::new(self.input_ids.finish()),
            Arc::new(self.ner_tags.finish()),
            Arc::new(self.entities.finish()),
        ];
        self.sink.write(columns)
    }

    /// Flushes and closes the file; returns the rows written.
    pub fn finish(mut self) -> Result<u64, DataError> {
        self.flush()?;
        self.sink.close()
    }
}

/// Writes `entity_embedding.parquet`; rows are numbered 1, 2, ... in push order.
pub struct EntityWriter {
    sink: Sink,
    row: Int32Builder,
    wikidata_id: StringBuilder,
    vector: ListBuilder<Float32Builder>,
    next_row: i32,
}

impl EntityWriter {
    /// Creates the file.
    pub fn create(path: &Path) -> Result<EntityWriter, DataError> {
        Ok(EntityWriter {
            sink: Sink::create(path, entity_schema())?,
            row: Int32Builder::new(),
            wikidata_id: StringBuilder::new(),
            vector: ListBuilder::new(Float32Builder::new()),
            next_row: 1,
        })
    }

    /// Appends the next row.
    pub fn push(&mut self, wikidata_id: &str, vector: &[f32]) {
        self.row.append_value(self.next_row);
        self.next_row += 1;
        self.wikidata_id.append_value(wikidata_id);
        self.vector.append_value(vector.iter().map(|&v| Some(v)));
    }

    /// Writes and closes the file; returns the rows written.
    pub fn finish(mut self) -> Result<u64, DataError> {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.row.finish()),
            Arc::new(self.wikidata_id.finish()),
            Arc::new(self.vector.finish()),
        ];
        self.sink.write(columns)?;
        self.sink.close()
    }
}

/// Writes one `train/part-NNNNN.parquet`.
pub struct TrainWriter {
    sink: Sink,
    impression_id: Int64Builder,
    user: Int32Builder,
    time: Int64Builder,
    history: ListBuilder<Int32Builder>,
    clicked: ListBuilder<Int32Builder>,
    non_clicked: ListBuilder<Int32Builder>,
    pending: usize,
}

impl TrainWriter {
    /// Creates the file.
    pub fn create(path: &Path) -> Result<TrainWriter, DataError> {
        Ok(TrainWriter {
            sink: Sink::create(path, train_schema())?,
            impression_id: Int64Builder::new(),
            user: Int32Builder::new(),
            time: Int64Builder::new(),
            history: ListBuilder::new(Int32Builder::new()),
            clicked: ListBuilder::new(Int32Builder::new()),
            non_clicked: ListBuilder::new(Int32Builder::new()),
            pending: 0,
        })
    }

    /// Appends one row.
    pub fn push(&mut self, row: &TrainImpression) -> Result<(), DataError> {
        self.impression_id.append_value(row.impression_id);
        self.user.append_value(row.user);
        self.time.append_value(row.time);
        self.history.append_value(row.history.iter().map(|&v| Some(v)));
        self.clicked.append_value(row.clicked.iter().map(|&v| Some(v)));
        self.non_clicked.append_value(row.non_clicked.iter().map(|&v| Some(v)));
        self.pending += 1;
        if self.pending >= BATCH_ROWS { self.flush() } else { Ok(()) }
    }

    fn flush(&mut self) -> Result<(), DataError> {
        self.pending = 0;
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.impression_id.finish()),
            Arc::new(self.user.finish()),
            Arc::new(self.time.finish()),
            Arc::new(self.history.finish()),
            Arc::new(self.clicked.finish()),
            Arc::new(self.non_clicked.finish()),
        ];
        self.sink.write(columns)
    }

    /// Flushes and closes the file; returns the rows written.
    pub fn finish(mut self) -> Result<u64, DataError> {
        self.flush()?;
        self.sink.close()
    }
}

/// Writes one `dev/` or `test/` `part-NNNNN.parquet`.
pub struct EvalWriter {
    sink: Sink,
    impression_id: Int64Builder,
    user: Int32Builder,
    time: Int64Builder,
    history: ListBuilder<Int32Builder>,
    candidates: ListBuilder<Int32Builder>,
    labels: ListBuilder<Int8Builder>,
    pending: usize,
}

impl EvalWriter {
    /// Creates the file.
    pub fn create(path: &Path) -> Result<EvalWriter, DataError> {
        Ok(EvalWriter {
            sink: Sink::create(path, eval_schema())?,
            impression_id: Int64Builder::new(),
            user: Int32Builder::new(),
            time: Int64Builder::new(),
            history: ListBuilder::new(Int32Builder::new()),
            candidates: ListBuilder::new(Int32Builder::new()),
            labels: ListBuilder::new(Int8Builder::new()),
            pending: 0,
        })
    }

    /// Appends one row.
    pub fn push(&mut self, row: &EvalImpression) -> Result<(), DataError> {
        self.impression_id.append_value(row.impression_id);
        self.user.append_value(row.user);
        self.time.append_value(row.time);
        self.history.append_value(row.history.iter().map(|&v| Some(v)));
        self.candidates.append_value(row.candidates.iter().map(|&v| Some(v)));
        self.labels.append_option(row.labels.as_ref().map(|l| l.iter().map(|&v| Some(v))));
        self.pending += 1;
        if self.pending >= BATCH_ROWS { self.flush() } else { Ok(()) }
    }

    fn flush(&mut self) -> Result<(), DataError> {
        self.pending = 0;
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.impression_id.finish()),
            Arc::new(self.user.finish()),
            Arc::new(self.time.finish()),
            Arc::new(self.history.finish()),
            Arc::new(self.candidates.finish()),
            Arc::new(self.labels.finish()),
        ];
        self.sink.write(columns)
    }

    /// Flushes and closes the file; returns the rows written.
    pub fn finish(mut self) -> Result<u64, DataError> {
        self.flush()?;
        self.sink.close()
    }
}

/// Writes `path` whole or not at all: `write` fills a temporary file beside it (`<name>.tmp`),
/// which is renamed to `path` when `write` succeeds and removed when anything fails.
pub fn write_atomically<T, E: From<DataError>>(
    path: &Path,
    write: impl FnOnce(&Path) -> Result<T, E>,
) -> Result<T, E> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let tmp = path.with_file_name(name);
    let result = write(&tmp).and_then(|value| {
        std::fs::rename(&tmp, path).map_err(|e| DataError::io(path, e))?;
        Ok(value)
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

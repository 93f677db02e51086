//! The layout of the shard files: their Arrow schemas and the rows they hold, which the
//! writers ([`crate::write`]) and the readers ([`crate::read`]) both follow.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

pub(crate) fn list_of(item: DataType) -> DataType {
    DataType::List(Arc::new(Field::new("item", item, true)))
}

/// Schema of `news.parquet`.
pub fn news_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("nid", DataType::Int32, false),
        Field::new("news_id", DataType::Utf8, false),
        Field::new("category", DataType::Int32, false),
        Field::new("subcategory", DataType::Int32, false),
        Field::new("title", DataType::Utf8, false),
        Field::new("input_ids", list_of(DataType::Int32), false),
        Field::new("ner_tags", list_of(DataType::Int8), false),
        Field::new("entities", list_of(DataType::Int32), false),
    ]))
}

/// Schema of `entity_embedding.parquet`.
pub fn entity_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("row", DataType::Int32, false),
        Field::new("wikidata_id", DataType::Utf8, false),
        Field::new("vector", list_of(DataType::Float32), false),
    ]))
}

/// Schema of `train/part-NNNNN.parquet`.
pub fn train_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("impression_id", DataType::Int64, false),
        Field::new("user", DataType::Int32, false),
        Field::new("time", DataType::Int64, false),
        Field::new("history", list_of(DataType::Int32), false),
        Field::new("clicked", list_of(DataType::Int32), false),
        Field::new("non_clicked", list_of(DataType::Int32), false),
    ]))
}

/// Schema of `dev/part-NNNNN.parquet` and `test/part-NNNNN.parquet`.
pub fn eval_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("impression_id", DataType::Int64, false),
        Field::new("user", DataType::Int32, false),
        Field::new("time", DataType::Int64, false),
        Field::new("history", list_of(DataType::Int32), false),
        Field::new("candidates", list_of(DataType::Int32), false),
        Field::new("labels", list_of(DataType::Int8), true),
    ]))
}

/// One training impression.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainImpression {
    /// MIND impression id.
    pub impression_id: i64,
    /// Dense user id, `1..=num_users`.
    pub user: i32,
    /// Unix seconds, UTC.
    pub time: i64,
    /// nids, oldest first (at most `max_history`).
    pub history: Vec<i32>,
    /// Clicked nids.
    pub clicked: Vec<i32>,
    /// Shown but not clicked nids.
    pub non_clicked: Vec<i32>,
}

/// One dev/test impression.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalImpression {
    /// MIND impression id.
    pub impression_id: i64,
    /// Dense user id, 0 for users not seen in train.
    pub user: i32,
    /// Unix seconds, UTC.
    pub time: i64,
    /// nids, oldest first (at most `max_history`).
    pub history: Vec<i32>,
    /// Candidate nids in their original order.
    pub candidates: Vec<i32>,
    /// Labels aligned to `candidates` (1 = clicked); `None` when the split has none.
    pub labels: Option<Vec<i8>>,
}

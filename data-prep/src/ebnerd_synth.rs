//! EB-NeRD's files (Ekstra Bladet's news recommendation data set, the RecSys Challenge 2024), as
//! its data card documents them, written by `mtrec-prep synth --format ebnerd`:
//!
//! - `articles.parquet`: `article_id` int32, `title`, `subtitle` (nullable), `body`, `category`
//!   int16, `category_str`, `subcategory` list<int16>, `ner_clusters` (nullable list<string>),
//!   `entity_groups` (list<string>, the entity types, aligned with `ner_clusters`), `topics`
//!   list<string>, `published_time` timestamp[us], `premium` bool, `article_type`,
//!   `sentiment_score` float32, `sentiment_label`;
//! - `train/`, `validation/`, `test/`: `behaviors.parquet` (`impression_id` uint32, `user_id`
//!   uint32, `impression_time` timestamp[us], `article_ids_inview` list<int32>,
//!   `article_ids_clicked` list<int32> (not in test), `session_id` uint32, `read_time` float32,
//!   `scroll_percentage` (nullable) float32, `device_type` int8, `is_sso_user` bool, `gender`,
//!   `postcode`, `age` (nullable int8), `is_subscriber` bool, `article_id` (nullable int32: the
//!   article the impression was shown on), `next_read_time`, `next_scroll_percentage` (nullable
//!   float32); test also `is_beyond_accuracy` bool) and `history.parquet` (`user_id` uint32,
//!   `article_id_fixed` list<int32>, `impression_time_fixed` list<timestamp[us]>,
//!   `scroll_percentage_fixed`, `read_time_fixed` list<float32>).
//!
//! The content is `synth`'s MIND-format data (its profile's statistics, its planted signal)
//! carried over: article `N123` is id 123, user `U7` is 7, a title's entities become its
//! `ner_clusters` (their surface forms, types `PER`/`LOC`/`ORG`/`MISC`) beside clusters that are
//! not in the title (as EB-NeRD's come from the body), a user's history is the one of their first
//! impression of the split. With the quirks a real dump has, each at a fixed rate (`QUIRKS`):
//! null subtitles and `ner_clusters`, users without a `history.parquet` row, in-view article ids
//! that name no article, nulls in the nullable behaviour columns.
use std::collections::HashMap;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use arrow::array::{
    ArrayRef, BooleanArray, Float32Array, Float32Builder, Int8Array, Int16Array, Int16Builder, Int32Array,
    Int32Builder, ListBuilder, StringArray, StringBuilder, TimestampMicrosecondArray,
    TimestampMicrosecondBuilder, UInt32Array,
};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use arrow::record_batch::RecordBatch;
use mtrec_data::mind::{parse_behavior_line, parse_news_line};
use parquet::arrow::ArrowWriter;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::staged::Staged;
use crate::synth::{self, SynthOptions};

/// The share of articles with a null subtitle, of articles with null `ner_clusters`, of users
/// without a history row, of in-view ids that name no article.
pub const QUIRKS: [(&str, f64); 4] = [
    ("null subtitle", 0.03),
    ("null ner_clusters", 0.03),
    ("user without history", 0.02),
    ("unknown in-view article", 0.005),
];

/// An in-view id that names no article: past every synthetic article id.
const UNKNOWN_ARTICLE_BASE: i32 = 900_000_000;

/// `synth --format ebnerd`: the MIND-format data of `opts` converted to EB-NeRD's files in `out`
/// (staged: complete or absent).
pub fn synth(opts: &SynthOptions, out: &Path, force: bool) -> Result<()> {
    let mind = tempfile::tempdir().context("a temporary folder for the MIND-format data")?;
    let mind_dir = mind.path().join("mind");
    synth::run(opts, &mind_dir, false)?;
    let staged = Staged::new(out, force)?;
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed ^ 0xEB);
    write_articles(&mind_dir, &staged.path().join("articles.parquet"), &mut rng)?;
    for (mind_split, split) in [("train", "train"), ("dev", "validation"), ("test", "test")] {
        let dir = staged.path().join(split);
        std::fs::create_dir_all(&dir).with_context(|| dir.display().to_string())?;
        write_split(&mind_dir.join(mind_split), &dir, split == "test", &mut rng)?;
    }
    staged.publish()
}

fn number(id: &str) -> Result<i32> {
    id[1..].parse().with_context(|| format!("synthetic id {id}"))
}

fn list_field(name: &str, item: DataType, nullable: bool) -> Field {
    Field::new(name, DataType::List(Arc::new(Field::new("item", item, true))), nullable)
}

fn timestamp() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, None)
}

fn write_parquet(path: &Path, schema: Schema, columns: Vec<ArrayRef>) -> Result<()> {
    let schema = Arc::new(schema);
    let batch = RecordBatch::try_new(schema.clone(), columns).with_context(|| path.display().to_string())?;
    let file = File::create(path).with_context(|| path.display().to_string())?;
    let mut writer = ArrowWriter::try_new(file, schema, None).with_context(|| path.display().to_string())?;
    writer.write(&batch).with_context(|| path.display().to_string())?;
    writer.close().with_context(|| path.display().to_string())?;
    Ok(())
}

/// Every news item of the three MIND splits (first definition wins) as one article row.
fn write_articles(mind: &Path, path: &Path, rng: &mut ChaCha8Rng) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    let (mut ids, mut titles, mut subtitles, mut bodies, mut category_strs) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut categories: Vec<i16> = Vec::new();
    let mut category_of: HashMap<String, i16> = HashMap::new();
    let mut subcategory_of: HashMap<String, i16> = HashMap::new();
    let mut subcategories = ListBuilder::new(Int16Builder::new());
    let mut clusters = ListBuilder::new(StringBuilder::new());
    let mut groups = ListBuilder::new(StringBuilder::new());
    let mut topics = ListBuilder::new(StringBuilder::new());
    for split in ["train", "dev", "test"] {
        let file = mind.join(split).join("news.tsv");
        let text = std::fs::read_to_string(&file).with_context(|| file.display().to_string())?;
        for (i, line) in text.lines().enumerate() {
            let n = parse_news_line(&file, i as u64 + 1, line)?;
            if !seen.insert(n.news_id.to_string()) {
                continue;
            }
            ids.push(number(n.news_id)?);
            titles.push(n.title.to_string());
            let abstract_text = n.content.split('\t').nth(3).unwrap_or_default().to_string();
            subtitles.push((!rng.random_bool(QUIRKS[0].1)).then(|| abstract_text.clone()));
            bodies.push(format!("{} {abstract_text}", n.title));
            let next = category_of.len() as i16;
            categories.push(*category_of.entry(n.category.to_string()).or_insert(next));
            category_strs.push(n.category.to_string());
            let next = subcategory_of.len() as i16;
            subcategories
                .values()
                .append_value(*subcategory_of.entry(n.subcategory.to_string()).or_insert(next));
            subcategories.append(true);
            if rng.random_bool(QUIRKS[1].1) {
                clusters.append(false);
                groups.append(false);
            } else {
                for e in &n.title_entities {
                    let group = match e.kind.as_str() {
                        "P" => "PER",
                        "G" => "LOC",
                        "O" => "ORG",
                        _ => "MISC",
                    };
                    clusters.values().append_value(e.surface_forms.first().unwrap_or(&e.label));
                    groups.values().append_value(group);
                }
                // A cluster of the body, not in the title.
                clusters.values().append_value("Ekstra Bladet");
                groups.values().append_value("ORG");
                clusters.append(true);
                groups.append(true);
            }
            topics.values().append_value(n.category);
            topics.append(true);
        }
    }
    let rows = ids.len();
    let published: Vec<i64> = (0..rows).map(|i| 1_683_000_000_000_000 + i as i64 * 60_000_000).collect();
    let schema = Schema::new(vec![
        Field::new("article_id", DataType::Int32, false),
        Field::new("title", DataType::Utf8, false),
        Field::new("subtitle", DataType::Utf8, true),
        Field::new("body", DataType::Utf8, false),
        Field::new("category", DataType::Int16, false),
        Field::new("category_str", DataType::Utf8, false),
        list_field("subcategory", DataType::Int16, false),
        list_field("ner_clusters", DataType::Utf8, true),
        list_field("entity_groups", DataType::Utf8, true),
        list_field("topics", DataType::Utf8, false),
        Field::new("published_time", timestamp(), false),
        Field::new("premium", DataType::Boolean, false),
        Field::new("article_type", DataType::Utf8, false),
        Field::new("sentiment_score", DataType::Float32, false),
        Field::new("sentiment_label", DataType::Utf8, false),
    ]);
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int32Array::from(ids)),
        Arc::new(StringArray::from(titles)),
        Arc::new(StringArray::from(subtitles)),
        Arc::new(StringArray::from(bodies)),
        Arc::new(Int16Array::from(categories)),
        Arc::new(StringArray::from(category_strs)),
        Arc::new(subcategories.finish()),
        Arc::new(clusters.finish()),
        Arc::new(groups.finish()),
        Arc::new(topics.finish()),
        Arc::new(TimestampMicrosecondArray::from(published)),
        Arc::new(BooleanArray::from((0..rows).map(|_| rng.random_bool(0.2)).collect::<Vec<_>>())),
        Arc::new(StringArray::from(vec!["article_default"; rows])),
        Arc::new(Float32Array::from((0..rows).map(|_| rng.random_range(0.5..1.0f32)).collect::<Vec<_>>())),
        Arc::new(StringArray::from(
            (0..rows).map(|i| ["Negative", "Neutral", "Positive"][i % 3]).collect::<Vec<_>>(),
        )),
    ];
    write_parquet(path, schema, columns)
}

/// Rows per `behaviors.parquet` row group: the split is converted in batches of this many
/// impressions, so memory does not grow with the file.
const BEHAVIOR_BATCH_ROWS: usize = 65_536;

/// The columns of `behaviors.parquet` (test: no `article_ids_clicked`, `is_beyond_accuracy`).
fn behaviors_schema(test: bool) -> Arc<Schema> {
    let mut fields = vec![
        Field::new("impression_id", DataType::UInt32, false),
        Field::new("user_id", DataType::UInt32, false),
        Field::new("impression_time", timestamp(), false),
        list_field("article_ids_inview", DataType::Int32, false),
    ];
    if !test {
        fields.push(list_field("article_ids_clicked", DataType::Int32, false));
    }
    fields.extend([
        Field::new("session_id", DataType::UInt32, false),
        Field::new("read_time", DataType::Float32, false),
        Field::new("scroll_percentage", DataType::Float32, true),
        Field::new("device_type", DataType::Int8, false),
        Field::new("is_sso_user", DataType::Boolean, false),
        Field::new("gender", DataType::Int8, true),
        Field::new("postcode", DataType::Int8, true),
        Field::new("age", DataType::Int8, true),
        Field::new("is_subscriber", DataType::Boolean, false),
        Field::new("article_id", DataType::Int32, true),
        Field::new("next_read_time", DataType::Float32, true),
        Field::new("next_scroll_percentage", DataType::Float32, true),
    ]);
    if test {
        fields.push(Field::new("is_beyond_accuracy", DataType::Boolean, false));
    }
    Arc::new(Schema::new(fields))
}

/// Impressions gathered for one row group of `behaviors.parquet`.
struct BehaviorsBatch {
    impression_ids: Vec<u32>,
    users: Vec<u32>,
    times: Vec<i64>,
    inview: ListBuilder<Int32Builder>,
    clicked: ListBuilder<Int32Builder>,
}

impl BehaviorsBatch {
    fn new() -> Self {
        BehaviorsBatch {
            impression_ids: Vec::new(),
            users: Vec::new(),
            times: Vec::new(),
            inview: ListBuilder::new(Int32Builder::new()),
            clicked: ListBuilder::new(Int32Builder::new()),
        }
    }

    fn len(&self) -> usize {
        self.impression_ids.len()
    }

    /// The gathered impressions as a record batch of `schema`, with the behaviour columns mtrec
    /// does not read drawn from `rng` (`session_id` counts on from `first_session`); empties the
    /// batch.
    fn take(
        &mut self,
        schema: &Arc<Schema>,
        test: bool,
        first_session: u32,
        rng: &mut ChaCha8Rng,
    ) -> Result<RecordBatch> {
        let rows = self.len();
        let nullable_f32 = |rng: &mut ChaCha8Rng, null: f64| -> Float32Array {
            (0..rows).map(|_| (!rng.random_bool(null)).then(|| rng.random_range(0.0..100.0f32))).collect()
        };
        let nullable_i8 = |rng: &mut ChaCha8Rng, null: f64, max: i8| -> Int8Array {
            (0..rows).map(|_| (!rng.random_bool(null)).then(|| rng.random_range(0..max))).collect()
        };
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(UInt32Array::from(std::mem::take(&mut self.impression_ids))),
            Arc::new(UInt32Array::from(std::mem::take(&mut self.users))),
            Arc::new(TimestampMicrosecondArray::from(std::mem::take(&mut self.times))),
            Arc::new(self.inview.finish()),
        ];
        let clicked = self.clicked.finish();
        if !test {
            columns.push(Arc::new(clicked));
        }
        let shown_on: Int32Array =
            (0..rows).map(|_| rng.random_bool(0.3).then(|| rng.random_range(1..1000))).collect();
        columns.extend([
            Arc::new(UInt32Array::from((first_session..first_session + rows as u32).collect::<Vec<_>>()))
                as ArrayRef,
            Arc::new(Float32Array::from(
                (0..rows).map(|_| rng.random_range(0.0..300.0f32)).collect::<Vec<_>>(),
            )),
            Arc::new(nullable_f32(rng, 0.4)),
            Arc::new(Int8Array::from((0..rows).map(|_| rng.random_range(1..4i8)).collect::<Vec<_>>())),
            Arc::new(BooleanArray::from((0..rows).map(|_| rng.random_bool(0.6)).collect::<Vec<_>>())),
            Arc::new(nullable_i8(rng, 0.9, 3)),
            Arc::new(nullable_i8(rng, 0.9, 5)),
            Arc::new(nullable_i8(rng, 0.9, 100)),
            Arc::new(BooleanArray::from((0..rows).map(|_| rng.random_bool(0.1)).collect::<Vec<_>>())),
            Arc::new(shown_on),
            Arc::new(nullable_f32(rng, 0.1)),
            Arc::new(nullable_f32(rng, 0.2)),
        ]);
        if test {
            columns.push(Arc::new(BooleanArray::from(vec![false; rows])));
        }
        Ok(RecordBatch::try_new(schema.clone(), columns)?)
    }
}

/// One MIND split folder as EB-NeRD's `behaviors.parquet` (streamed in row groups of
/// [`BEHAVIOR_BATCH_ROWS`]) and `history.parquet` in `out`.
fn write_split(mind: &Path, out: &Path, test: bool, rng: &mut ChaCha8Rng) -> Result<()> {
    let file = mind.join("behaviors.tsv");
    let reader = std::io::BufReader::new(File::open(&file).with_context(|| file.display().to_string())?);
    let path = out.join("behaviors.parquet");
    let schema = behaviors_schema(test);
    let sink = File::create(&path).with_context(|| path.display().to_string())?;
    let mut writer =
        ArrowWriter::try_new(sink, schema.clone(), None).with_context(|| path.display().to_string())?;
    let mut batch = BehaviorsBatch::new();
    let mut written = 0u32;
    // user -> (history ids, the impression's time)
    let mut histories: Vec<(u32, Vec<i32>, i64)> = Vec::new();
    let mut has_history = std::collections::HashSet::new();
    for (i, line) in std::io::BufRead::lines(reader).enumerate() {
        let line = line.with_context(|| file.display().to_string())?;
        let b = parse_behavior_line(&file, i as u64 + 1, &line)?;
        let user = number(b.user)? as u32;
        batch.impression_ids.push(b.impression_id as u32);
        batch.users.push(user);
        batch.times.push(b.time * 1_000_000);
        for (id, label) in &b.impressions {
            let article =
                if rng.random_bool(QUIRKS[3].1) { UNKNOWN_ARTICLE_BASE + number(id)? } else { number(id)? };
            batch.inview.values().append_value(article);
            if *label == Some(1) {
                batch.clicked.values().append_value(article);
            }
        }
        batch.inview.append(true);
        batch.clicked.append(true);
        if has_history.insert(user) {
            let history = b.history.iter().map(|id| number(id)).collect::<Result<Vec<i32>>>()?;
            histories.push((user, history, b.time * 1_000_000));
        }
        if batch.len() == BEHAVIOR_BATCH_ROWS {
            let rows = batch.len() as u32;
            writer
                .write(&batch.take(&schema, test, written, rng)?)
                .with_context(|| path.display().to_string())?;
            // One row group per batch: the writer holds no more than one batch.
            writer.flush().with_context(|| path.display().to_string())?;
            written += rows;
        }
    }
    if batch.len() > 0 {
        writer
            .write(&batch.take(&schema, test, written, rng)?)
            .with_context(|| path.display().to_string())?;
    }
    writer.close().with_context(|| path.display().to_string())?;

    // history.parquet: one row per user, but for the users left without one.
    histories.retain(|_| !rng.random_bool(QUIRKS[2].1));
    let mut ids = ListBuilder::new(Int32Builder::new());
    let mut when = ListBuilder::new(TimestampMicrosecondBuilder::new());
    let mut scroll = ListBuilder::new(Float32Builder::new());
    let mut read = ListBuilder::new(Float32Builder::new());
    for (_, history, time) in &histories {
        for (k, &id) in history.iter().enumerate() {
            ids.values().append_value(id);
            when.values().append_value(time - (history.len() - k) as i64 * 3_600_000_000);
            scroll.values().append_option(rng.random_bool(0.8).then(|| rng.random_range(0.0..100.0f32)));
            read.values().append_value(rng.random_range(0.0..300.0f32));
        }
        ids.append(true);
        when.append(true);
        scroll.append(true);
        read.append(true);
    }
    let schema = Schema::new(vec![
        Field::new("user_id", DataType::UInt32, false),
        list_field("article_id_fixed", DataType::Int32, false),
        list_field("impression_time_fixed", timestamp(), false),
        list_field("scroll_percentage_fixed", DataType::Float32, false),
        list_field("read_time_fixed", DataType::Float32, false),
    ]);
    let columns: Vec<ArrayRef> = vec![
        Arc::new(UInt32Array::from(histories.iter().map(|h| h.0).collect::<Vec<_>>())),
        Arc::new(ids.finish()),
        Arc::new(when.finish()),
        Arc::new(scroll.finish()),
        Arc::new(read.finish()),
    ];
    write_parquet(&out.join("history.parquet"), schema, columns)
}

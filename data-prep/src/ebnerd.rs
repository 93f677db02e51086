//! `mtrec-prep ebnerd`: EB-NeRD (Ekstra Bladet's news recommendation data set, the RecSys
//! Challenge 2024) to the shards of the data contract, so that training, eval and predict run on
//! it unchanged. The files are as its data card documents them ([`crate::ebnerd_synth`] lists
//! every column); only the columns named here are read.
//!
//! What each field becomes:
//! - `articles.parquet`, read from each split folder's parent (EB-NeRD ships it beside `train/`
//!   and `validation/`; its test set beside `test/`), the first row of an `article_id` winning:
//!   news id = `article_id` as text; title = `title` (with `--subtitle`: `title + ". " +
//!   subtitle`, the title alone where the subtitle is null); category = `category_str` (the name
//!   of `category`); subcategory = the first of `subcategory` as text, `-` when there is none;
//!   NER tags = every `ner_clusters` string found in the title text at word boundaries, each
//!   occurrence tagged (BIO, or with `--ner-scheme typed` its type from `entity_groups`), the
//!   match rate reported; null `ner_clusters`: every tag -1 (ignored). EB-NeRD has no entity
//!   vectors: no news item has an entity field.
//! - `behaviors.parquet`, streamed in batches: impression = `impression_id`, user = `user_id`,
//!   time = `impression_time` in seconds, candidates = `article_ids_inview`, label 1 where the
//!   candidate is in `article_ids_clicked` (test has no such column: unlabeled). An impression
//!   whose in-view or clicked list is null is dropped and counted.
//! - `history.parquet`: a user's history is their `article_id_fixed` (the most recent
//!   `--max-history`); a user without a row gets an empty history, counted.
//!
//! An article id that no `articles.parquet` defines is an error naming the file, row,
//! impression (or user) and id, unless `--drop-unknown-news` drops and counts it, as for MIND.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;

use anyhow::{Context, Result};
use arrow::array::{Array, ArrayRef, AsArray, Int64Array, ListArray, StringArray};
use arrow::compute::{CastOptions, cast_with_options};
use arrow::datatypes::{DataType, Field, Int64Type, TimeUnit};
use arrow::record_batch::RecordBatch;
use mtrec_data::mind::MindEntity;
use mtrec_data::{
    DataError, FORMAT_VERSION, Manifest, PrepReport, Split, SplitReport, Splits, tokenizer_identity,
};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use rayon::prelude::*;

use crate::news::{Article, NewsTable, write_news};
use crate::shards::{
    Origin, PrepOptions, Row, SplitOutput, SplitTarget, progress, publish_shards, record_split, shard_count,
    stream_split,
};
use crate::tokenize::TitleTokenizer;

/// Rows per batch read from a Parquet file.
const BATCH_ROWS: usize = 8192;

/// Options of `mtrec-prep ebnerd`.
#[derive(Debug, Clone)]
pub struct EbnerdOptions {
    /// The split folders (`behaviors.parquet`, `history.parquet`; `articles.parquet` in their
    /// parent) and the rest.
    pub prep: PrepOptions,
    /// Title text = `title + ". " + subtitle`.
    pub subtitle: bool,
}

/// Runs the whole prep into a staged folder: on error nothing is left at `--out`.
pub fn run(opts: &EbnerdOptions) -> Result<Manifest> {
    publish_shards(&opts.prep.out, opts.prep.force, |dir| prep_into(opts, dir))
}

fn prep_into(ebnerd: &EbnerdOptions, dir: &Path) -> Result<Manifest> {
    let opts = &ebnerd.prep;
    let started = Instant::now();
    let tokenizer_sha256 = tokenizer_identity(&opts.model)?;
    let tokenizer = TitleTokenizer::load(&opts.model, opts.max_title_len)?;
    let mut report = PrepReport::default();

    // 1. Articles of every split's parent folder, each file once; the first row of an id wins.
    let mut table = NewsTable::default();
    let mut read: Vec<PathBuf> = Vec::new();
    for (_, folder) in opts.folders() {
        // Canonical first: the parent of `.` or `train/.` is the folder above.
        let folder = folder.canonicalize().map_err(|e| DataError::io(folder, e))?;
        let path = folder.parent().unwrap_or(&folder).join("articles.parquet");
        if !read.contains(&path) {
            read_articles(&path, ebnerd.subtitle, &mut table, &mut report)?;
            read.push(path);
        }
    }
    NewsTable::warn_duplicates(&report);
    tracing::info!(
        news = table.news.len(),
        ner_clusters = report.ner_clusters,
        in_title = report.ner_clusters_in_title,
        match_rate = report.ner_clusters_in_title as f64 / report.ner_clusters.max(1) as f64,
        elapsed_s = started.elapsed().as_secs_f64(),
        "articles read"
    );

    // 2. news.parquet and an empty entity_embedding.parquet.
    let written = write_news(dir, &table.news, &tokenizer, opts.ner_scheme, &None, &mut report)?;
    let mut files = written.files;
    let nid_of: HashMap<i64, i32> = table
        .news
        .iter()
        .enumerate()
        .map(|(i, n)| (n.news_id.parse().expect("an article_id"), i as i32 + 1))
        .collect();

    // 3. Behaviours, streamed.
    let resolver = Resolver { nid_of: &nid_of, drop_unknown: opts.drop_unknown_news };
    let mut users: HashMap<String, i32> = HashMap::new();
    let mut splits = Splits::default();
    for (split, folder) in opts.folders() {
        let output = write_split_folder(dir, split, folder, &resolver, opts, &mut users)?;
        record_split(&mut splits, &mut report, &mut files, split, output, started);
    }

    Ok(Manifest {
        format_version: FORMAT_VERSION,
        tokenizer_sha256,
        max_title_len: opts.max_title_len as u32,
        max_history: opts.max_history as u32,
        categories: written.categories,
        subcategories: written.subcategories,
        ner_scheme: opts.ner_scheme,
        ner_tags: written.ner_tags,
        num_news: table.news.len() as u64,
        num_users: users.len() as u64,
        // No entity vectors; the width only sizes the (unused) entity projection.
        entity_dim: 100,
        num_entities: written.num_entities,
        files,
        splits,
        prep_report: report,
    })
}

// ---- Parquet input -------------------------------------------------------------------------

/// The kinds of column this reader works with. Each accepts the types a writer may have used
/// (polars writes large strings and large lists; the data card's integers are 8 to 32 bits) and
/// is cast to one of them.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Int,
    Text,
    IntList,
    TextList,
    /// A timestamp of any unit, read as whole seconds.
    Time,
}

impl Kind {
    fn accepts(self, found: &DataType) -> bool {
        let text = |t: &DataType| matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View);
        let item = |t: &DataType| match t {
            DataType::List(f) | DataType::LargeList(f) => Some(f.data_type().clone()),
            _ => None,
        };
        match self {
            Kind::Int => found.is_integer(),
            Kind::Text => text(found),
            Kind::IntList => item(found).is_some_and(|t| t.is_integer()),
            Kind::TextList => item(found).is_some_and(|t| text(&t)),
            Kind::Time => matches!(found, DataType::Timestamp(..)),
        }
    }

    fn target(self) -> DataType {
        match self {
            Kind::Int | Kind::Time => DataType::Int64,
            Kind::Text => DataType::Utf8,
            Kind::IntList => DataType::List(Field::new("item", DataType::Int64, true).into()),
            Kind::TextList => DataType::List(Field::new("item", DataType::Utf8, true).into()),
        }
    }

    fn expected(self) -> &'static str {
        match self {
            Kind::Int => "an integer",
            Kind::Text => "a string",
            Kind::IntList => "a list of integers",
            Kind::TextList => "a list of strings",
            Kind::Time => "a timestamp",
        }
    }
}

/// A column to read: its name, kind, and whether the file must have it.
struct Column {
    name: &'static str,
    kind: Kind,
    required: bool,
}

const fn column(name: &'static str, kind: Kind) -> Column {
    Column { name, kind, required: true }
}

/// One input Parquet file opened for the columns asked for.
struct Input {
    path: PathBuf,
    rows: u64,
    reader: ParquetRecordBatchReader,
    /// The columns found: name, kind, and for a timestamp the divisor to seconds.
    columns: Vec<(&'static str, Kind, i64)>,
}

/// One batch, its columns cast to their kind's type.
struct Batch {
    /// 1-based number of the batch's first row in the file.
    first_row: u64,
    len: usize,
    columns: HashMap<&'static str, ArrayRef>,
}

impl Batch {
    fn ints(&self, name: &str) -> &Int64Array {
        self.columns[name].as_primitive::<Int64Type>()
    }
    fn texts(&self, name: &str) -> &StringArray {
        self.columns[name].as_string::<i32>()
    }
    fn list(&self, name: &str) -> Option<&ListArray> {
        self.columns.get(name).map(|c| c.as_list::<i32>())
    }
}

fn open_input(path: &Path, wanted: &[Column]) -> Result<Input, DataError> {
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let parquet_error = |error| DataError::Parquet { path: path.to_path_buf(), error };
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(parquet_error)?;
    let schema = builder.schema().clone();
    let rows = u64::try_from(builder.metadata().file_metadata().num_rows()).unwrap_or(0);
    let (mut roots, mut columns) = (Vec::new(), Vec::new());
    for c in wanted {
        let Ok(index) = schema.index_of(c.name) else {
            if c.required {
                let reason = "missing".to_string();
                return Err(DataError::Schema { path: path.to_path_buf(), field: c.name.into(), reason });
            }
            continue;
        };
        let found = schema.field(index).data_type();
        if !c.kind.accepts(found) {
            let reason = format!("expected {}, found {found}", c.kind.expected());
            return Err(DataError::Schema { path: path.to_path_buf(), field: c.name.into(), reason });
        }
        let divisor = match found {
            DataType::Timestamp(TimeUnit::Second, _) => 1,
            DataType::Timestamp(TimeUnit::Millisecond, _) => 1_000,
            DataType::Timestamp(TimeUnit::Microsecond, _) => 1_000_000,
            DataType::Timestamp(TimeUnit::Nanosecond, _) => 1_000_000_000,
            _ => 1,
        };
        roots.push(index);
        columns.push((c.name, c.kind, divisor));
    }
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
    let reader = builder.with_projection(mask).with_batch_size(BATCH_ROWS).build().map_err(parquet_error)?;
    Ok(Input { path: path.to_path_buf(), rows, reader, columns })
}

impl Input {
    fn has(&self, name: &str) -> bool {
        self.columns.iter().any(|c| c.0 == name)
    }

    /// The batches, each column cast to its kind's type (timestamps to seconds).
    fn batches(self) -> impl Iterator<Item = Result<Batch, DataError>> {
        let Input { path, reader, columns, .. } = self;
        let mut next_row = 1u64;
        reader.map(move |batch| {
            let batch: RecordBatch = batch.map_err(|error| DataError::Arrow { path: path.clone(), error })?;
            let mut cast = HashMap::new();
            for &(name, kind, divisor) in &columns {
                let raw = batch.column_by_name(name).ok_or_else(|| DataError::Schema {
                    path: path.clone(),
                    field: name.into(),
                    reason: "missing".into(),
                })?;
                let arrow_error = |error| DataError::Arrow { path: path.clone(), error };
                // Not `safe`: a value the target cannot hold (an unsigned id past i64) is an
                // error, not a null.
                let options = CastOptions { safe: false, ..Default::default() };
                let mut array = cast_with_options(raw, &kind.target(), &options).map_err(arrow_error)?;
                if kind == Kind::Time && divisor != 1 {
                    let seconds: Int64Array =
                        array.as_primitive::<Int64Type>().unary(|t: i64| t.div_euclid(divisor));
                    array = std::sync::Arc::new(seconds);
                }
                cast.insert(name, array);
            }
            let first_row = next_row;
            next_row += batch.num_rows() as u64;
            Ok(Batch { first_row, len: batch.num_rows(), columns: cast })
        })
    }
}

/// The items of list row `i` (`None`: the list is null).
fn ints_of(list: &ListArray, i: usize) -> Option<impl Iterator<Item = Option<i64>> + '_> {
    if list.is_null(i) {
        return None;
    }
    let values = list.values().as_primitive::<Int64Type>();
    let offsets = list.value_offsets();
    Some(
        (offsets[i] as usize..offsets[i + 1] as usize)
            .map(move |k| values.is_valid(k).then(|| values.value(k))),
    )
}

fn texts_of(list: &ListArray, i: usize) -> Option<Vec<Option<&str>>> {
    if list.is_null(i) {
        return None;
    }
    let values = list.values().as_string::<i32>();
    let offsets = list.value_offsets();
    Some(
        (offsets[i] as usize..offsets[i + 1] as usize)
            .map(|k| values.is_valid(k).then(|| values.value(k)))
            .collect(),
    )
}

// ---- articles ------------------------------------------------------------------------------

/// Reads `articles.parquet` into `table`, counting the NER clusters found in the titles of the
/// articles it adds (a repeated article, as the test set's own `articles.parquet` repeats them,
/// counts once).
fn read_articles(path: &Path, subtitle: bool, table: &mut NewsTable, report: &mut PrepReport) -> Result<()> {
    let mut wanted = vec![
        column("article_id", Kind::Int),
        column("title", Kind::Text),
        column("category_str", Kind::Text),
        column("subcategory", Kind::IntList),
        column("ner_clusters", Kind::TextList),
        column("entity_groups", Kind::TextList),
    ];
    if subtitle {
        wanted.push(column("subtitle", Kind::Text));
    }
    let input = open_input(path, &wanted)?;
    let mut null_subtitles = 0u64;
    for batch in input.batches() {
        let batch = batch?;
        let (ids, titles, categories) =
            (batch.ints("article_id"), batch.texts("title"), batch.texts("category_str"));
        let subtitles = subtitle.then(|| batch.texts("subtitle"));
        let subcategories = batch.list("subcategory").context("subcategory")?;
        let (clusters, groups) = (
            batch.list("ner_clusters").context("ner_clusters")?,
            batch.list("entity_groups").context("entity_groups")?,
        );
        for i in 0..batch.len {
            let row = batch.first_row + i as u64;
            let invalid = |field: &str, reason: String| Origin::Rows.error(path, row, field, reason);
            if ids.is_null(i) {
                return Err(invalid("article_id", "null".into()).into());
            }
            let id = ids.value(i);
            if titles.is_null(i) {
                return Err(invalid("title", format!("null (article {id})")).into());
            }
            if categories.is_null(i) {
                return Err(invalid("category_str", format!("null (article {id})")).into());
            }
            let mut title = titles.value(i).to_string();
            // This row's counts, added to the report if the article is new.
            let (mut null_subtitle, mut without_clusters, mut clusters_seen, mut in_title) = (0, 0, 0, 0);
            let sub = subtitles.and_then(|s| s.is_valid(i).then(|| s.value(i)));
            match sub {
                Some(s) if !s.is_empty() => title = format!("{title}. {s}"),
                Some(_) => {}
                None => null_subtitle = u64::from(subtitle),
            }
            let subcategory = ints_of(subcategories, i)
                .and_then(|mut items| items.next().flatten())
                .map_or_else(|| "-".to_string(), |s| s.to_string());
            let entity_clusters = texts_of(clusters, i);
            let entity_types = texts_of(groups, i);
            let entities = match &entity_clusters {
                None => {
                    without_clusters = 1;
                    None
                }
                Some(names) => {
                    let types = entity_types.as_deref().unwrap_or_default();
                    if types.len() != names.len() {
                        let reason = format!(
                            "{} types for {} ner_clusters (article {id}); they are aligned",
                            types.len(),
                            names.len()
                        );
                        return Err(invalid("entity_groups", reason).into());
                    }
                    let mut entities = Vec::new();
                    for (name, kind) in names.iter().zip(types) {
                        let Some(name) = name.filter(|n| !n.trim().is_empty()) else { continue };
                        clusters_seen += 1;
                        let offsets = occurrences(&title, name);
                        if offsets.is_empty() {
                            continue;
                        }
                        in_title += 1;
                        entities.push(MindEntity {
                            label: name.to_string(),
                            kind: kind.unwrap_or("MISC").to_string(),
                            wikidata_id: String::new(),
                            confidence: 1.0,
                            surface_forms: vec![name.to_string(); offsets.len()],
                            occurrence_offsets: offsets,
                        });
                    }
                    Some(entities)
                }
            };
            let mut h = DefaultHasher::new();
            (&title, categories.value(i), &subcategory, &entity_clusters, &entity_types).hash(&mut h);
            let item = Article {
                news_id: id.to_string(),
                category: categories.value(i).to_string(),
                subcategory,
                title,
                entities,
                content_hash: h.finish(),
            };
            if table.add(item, report)? {
                null_subtitles += null_subtitle;
                report.articles_without_ner_clusters += without_clusters;
                report.ner_clusters += clusters_seen;
                report.ner_clusters_in_title += in_title;
            }
        }
    }
    if null_subtitles > 0 {
        tracing::info!(
            articles = null_subtitles,
            "{}: null subtitles; those titles stand alone",
            path.display()
        );
    }
    Ok(())
}

/// Code-point offsets of every occurrence of `needle` in `text` that starts and ends at a word
/// boundary (no letter or digit either side), so that `Bladet` is not found in `Ekstrabladet`.
fn occurrences(text: &str, needle: &str) -> Vec<u64> {
    text.match_indices(needle)
        .filter(|&(b, m)| {
            let before = text[..b].chars().next_back();
            let after = text[b + m.len()..].chars().next();
            !before.is_some_and(char::is_alphanumeric) && !after.is_some_and(char::is_alphanumeric)
        })
        .map(|(b, _)| text[..b].chars().count() as u64)
        .collect()
}

// ---- histories and behaviours ---------------------------------------------------------------

/// Article ids to nids, or the error (or count) for one that no article has.
struct Resolver<'a> {
    nid_of: &'a HashMap<i64, i32>,
    drop_unknown: bool,
}

impl Resolver<'_> {
    /// `what` names the row's owner (`impression 12`, `user 7`) in the error.
    fn resolve(
        &self,
        id: Option<i64>,
        at: (&Path, u64, &str),
        what: &dyn Fn() -> String,
        dropped: &mut u64,
    ) -> Result<Option<i32>, DataError> {
        if let Some(&nid) = id.and_then(|id| self.nid_of.get(&id)) {
            return Ok(Some(nid));
        }
        if self.drop_unknown {
            *dropped += 1;
            return Ok(None);
        }
        let (path, row, field) = at;
        let reason = match id {
            Some(id) => format!(
                "article {id} of {} is in no articles.parquet (pass --drop-unknown-news to drop such ids)",
                what()
            ),
            None => format!("a null article id in {} (pass --drop-unknown-news to drop such ids)", what()),
        };
        Err(Origin::Rows.error(path, row, field, reason))
    }
}

/// Each user's history from `history.parquet`: the most recent `max_history` known articles.
fn read_histories(
    path: &Path,
    resolver: &Resolver,
    opts: &PrepOptions,
    report: &mut SplitReport,
) -> Result<HashMap<i64, Vec<i32>>> {
    let input = open_input(path, &[column("user_id", Kind::Int), column("article_id_fixed", Kind::IntList)])?;
    let mut histories: HashMap<i64, (u64, Vec<i32>)> = HashMap::new();
    for batch in input.batches() {
        let batch = batch?;
        let (user_ids, lists) =
            (batch.ints("user_id"), batch.list("article_id_fixed").context("article_id_fixed")?);
        for i in 0..batch.len {
            let row = batch.first_row + i as u64;
            if user_ids.is_null(i) {
                return Err(Origin::Rows.error(path, row, "user_id", "null").into());
            }
            let user = user_ids.value(i);
            let mut history = Vec::new();
            for id in ints_of(lists, i).into_iter().flatten() {
                let at = (path, row, "article_id_fixed");
                if let Some(nid) =
                    resolver.resolve(id, at, &|| format!("user {user}"), &mut report.dropped_unknown_news)?
                {
                    history.push(nid);
                }
            }
            history.drain(..history.len().saturating_sub(opts.max_history));
            if let Some((first, _)) = histories.insert(user, (row, history)) {
                let reason =
                    format!("user {user} has a second row (the first is {})", Origin::Rows.name(first));
                return Err(Origin::Rows.error(path, row, "user_id", reason).into());
            }
        }
    }
    Ok(histories.into_iter().map(|(user, (_, history))| (user, history)).collect())
}

/// A `behaviors.parquet` row resolved: its shard row, and its user when they have no
/// `history.parquet` row (counted).
struct Resolved {
    row: Row,
    user_without_history: Option<i64>,
}

/// One batch of `behaviors.parquet` resolved, without the impressions whose lists are null.
fn behaviour_rows(
    path: &Path,
    batch: &Batch,
    resolver: &Resolver,
    histories: &HashMap<i64, Vec<i32>>,
) -> Result<Vec<Resolved>, DataError> {
    let (impressions, users, times) =
        (batch.ints("impression_id"), batch.ints("user_id"), batch.ints("impression_time"));
    let inview = batch.list("article_ids_inview").expect("a required column");
    let clicked = batch.list("article_ids_clicked");
    let rows: Vec<Result<Option<Resolved>, DataError>> = (0..batch.len)
        .into_par_iter()
        .map(|i| {
            let number = batch.first_row + i as u64;
            for (name, column) in
                [("impression_id", impressions), ("user_id", users), ("impression_time", times)]
            {
                if column.is_null(i) {
                    return Err(Origin::Rows.error(path, number, name, "null"));
                }
            }
            let (impression_id, user) = (impressions.value(i), users.value(i));
            let Some(shown) = ints_of(inview, i) else { return Ok(None) };
            let clicks: Option<Vec<Option<i64>>> = match clicked {
                Some(c) => match ints_of(c, i) {
                    Some(items) => Some(items.collect()),
                    None => return Ok(None),
                },
                None => None,
            };
            let mut dropped = 0;
            let (mut candidates, mut labels) = (Vec::new(), Vec::new());
            for id in shown {
                let at = (path, number, "article_ids_inview");
                if let Some(nid) =
                    resolver.resolve(id, at, &|| format!("impression {impression_id}"), &mut dropped)?
                {
                    candidates.push(nid);
                    labels.push(clicks.as_ref().is_some_and(|c| c.contains(&id)) as i8);
                }
            }
            let history = histories.get(&user);
            let row = Row {
                number,
                impression_id,
                user: user.to_string(),
                time: times.value(i),
                history: history.cloned().unwrap_or_default(),
                candidates,
                labels: clicks.is_some().then_some(labels),
                dropped_unknown: dropped,
            };
            Ok(Some(Resolved { row, user_without_history: history.is_none().then_some(user) }))
        })
        .collect();
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        if let Some(row) = row? {
            out.push(row);
        }
    }
    Ok(out)
}

/// One split folder into its shards: the users' histories from `history.parquet`, then
/// `behaviors.parquet` streamed: a reader thread decodes batches, the rayon pool resolves their
/// rows and joins the histories, the shard writer of [`crate::shards`] writes them.
fn write_split_folder(
    dir: &Path,
    split: Split,
    folder: &Path,
    resolver: &Resolver,
    opts: &PrepOptions,
    users: &mut HashMap<String, i32>,
) -> Result<SplitOutput> {
    let mut report = SplitReport::default();
    let histories = &read_histories(&folder.join("history.parquet"), resolver, opts, &mut report)?;
    let path = &folder.join("behaviors.parquet");
    let wanted = [
        column("impression_id", Kind::Int),
        column("user_id", Kind::Int),
        column("impression_time", Kind::Time),
        column("article_ids_inview", Kind::IntList),
        Column { name: "article_ids_clicked", kind: Kind::IntList, required: split == Split::Train },
    ];
    let input = open_input(path, &wanted)?;
    let rows = input.rows;
    if rows == 0 {
        anyhow::bail!("{}: the file has no rows", path.display());
    }
    if split != Split::Train && !input.has("article_ids_clicked") {
        tracing::info!("{}: no article_ids_clicked column: the split is unlabeled", path.display());
    }
    report.lines = rows;
    let target = SplitTarget {
        dir,
        split,
        source: path,
        origin: Origin::Rows,
        rows,
        shards: shard_count(opts.shards, rows),
    };
    let bar = progress(rows, &format!("{} behaviors", split.name()), "{pos}/{len} rows");
    let mut without_history: HashSet<i64> = HashSet::new();
    let mut null_lists = 0u64;
    let read = move |tx: mpsc::SyncSender<Result<Batch, DataError>>| {
        for batch in input.batches() {
            if tx.send(batch).is_err() {
                return;
            }
        }
    };
    let output = stream_split(&target, report, users, read, |batch| {
        bar.inc(batch.len as u64);
        let rows = behaviour_rows(path, &batch, resolver, histories)?;
        null_lists += (batch.len - rows.len()) as u64;
        let mut out = Vec::with_capacity(rows.len());
        for resolved in rows {
            without_history.extend(resolved.user_without_history);
            out.push(resolved.row);
        }
        Ok(out)
    })?;
    bar.finish_and_clear();
    let (info, mut report, files) = output;
    report.null_lists = null_lists;
    report.users_without_history = without_history.len() as u64;
    Ok((info, report, files))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn occurrences_are_whole_words_in_code_points() {
        // Not inside a word: a letter before ("EkstraBladet") or after ("Bladets").
        assert_eq!(occurrences("Ekstra Bladet: Bladet og EkstraBladet, Bladets", "Bladet"), vec![7, 15]);
        // "ø" and "å" are letters: no match inside "Århusbladets" or "Bladets".
        assert_eq!(occurrences("Søren i Århus, Århusbladets Århus", "Århus"), vec![8, 28]);
        assert_eq!(occurrences("FCK-spiller", "FCK"), vec![0]);
        assert!(occurrences("nothing here", "Bladet").is_empty());
    }
}

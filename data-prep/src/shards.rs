//! The behaviours stage every data set shares: impressions, already resolved to nids by a data
//! set's reader, arrive in batches over a bounded channel and are written into a split's shards
//! (`train/part-NNNNN.parquet`: clicked and non-clicked; `dev/`, `test/`: candidates and labels).
//! Shard k holds the input rows `[k*rows/shards, (k+1)*rows/shards)`, so the shards of a split are
//! balanced and in input order whatever was dropped.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use mtrec_data::write::{EvalWriter, TrainWriter, part_name};
use mtrec_data::{
    DataError, EvalImpression, FileEntry, MANIFEST_FILE, Manifest, NerScheme, PrepReport, Split, SplitInfo,
    SplitReport, Splits, TrainImpression, sha256_file,
};

use crate::staged::Staged;

/// What every data set's prep is given (`mtrec-prep mind` and `ebnerd` alike).
#[derive(Debug, Clone)]
pub struct PrepOptions {
    /// Train split folder.
    pub train: PathBuf,
    /// Dev (EB-NeRD: validation) split folder.
    pub dev: PathBuf,
    /// Test split folder, if any.
    pub test: Option<PathBuf>,
    /// Model folder with `tokenizer.json` or `vocab.txt`.
    pub model: PathBuf,
    /// Output shards folder.
    pub out: PathBuf,
    /// Shards per split (`None`: one per 250,000 impressions).
    pub shards: Option<usize>,
    /// Tokens per title, the special tokens included.
    pub max_title_len: usize,
    /// History entries kept (the most recent).
    pub max_history: usize,
    /// Drop (and count) news ids that no news item has instead of failing.
    pub drop_unknown_news: bool,
    /// NER tag scheme.
    pub ner_scheme: NerScheme,
    /// Replace a non-empty `--out`.
    pub force: bool,
}

impl PrepOptions {
    /// The split folders given, train first.
    pub fn folders(&self) -> impl Iterator<Item = (Split, &Path)> {
        [
            (Split::Train, Some(self.train.as_path())),
            (Split::Dev, Some(&self.dev)),
            (Split::Test, self.test.as_deref()),
        ]
        .into_iter()
        .filter_map(|(s, f)| Some((s, f?)))
    }
}

/// Records what one split wrote: its manifest entry in `splits`, its report in `report`, its
/// files in `files`; logs it with the time since `started`.
pub fn record_split(
    splits: &mut Splits,
    report: &mut PrepReport,
    files: &mut Vec<FileEntry>,
    split: Split,
    (info, split_report, split_files): SplitOutput,
    started: Instant,
) {
    files.extend(split_files);
    tracing::info!(
        split = split.name(),
        impressions = info.impressions,
        elapsed_s = started.elapsed().as_secs_f64(),
        "behaviors written"
    );
    match split {
        Split::Train => (splits.train, report.train) = (Some(info), Some(split_report)),
        Split::Dev => (splits.dev, report.dev) = (Some(info), Some(split_report)),
        Split::Test => (splits.test, report.test) = (Some(info), Some(split_report)),
    }
}

/// Runs `prep` on a staged folder ([`Staged`]) and publishes it at `out` with its
/// `manifest.json` (the run's wall time in its report): `out` is complete or absent.
pub fn publish_shards(
    out: &Path,
    force: bool,
    prep: impl FnOnce(&Path) -> Result<Manifest>,
) -> Result<Manifest> {
    let started = std::time::Instant::now();
    let staged = Staged::new(out, force)?;
    let mut manifest = prep(staged.path())?;
    manifest.prep_report.elapsed_seconds = started.elapsed().as_secs_f64();
    let text = serde_json::to_string_pretty(&manifest).context("serializing manifest.json")?;
    std::fs::write(staged.path().join(MANIFEST_FILE), text).context("writing manifest.json")?;
    staged.publish()?;
    Ok(manifest)
}

/// Impressions per shard when `--shards` is not given.
const AUTO_SHARD_ROWS: u64 = 250_000;

/// One impression after its reader resolved its news ids.
pub struct Row {
    /// 1-based number of the input row (a `behaviors.tsv` line, a `behaviors.parquet` row).
    pub number: u64,
    pub impression_id: i64,
    /// The data set's user id; train's users get the ids `1..`, others 0.
    pub user: String,
    /// Unix seconds.
    pub time: i64,
    pub history: Vec<i32>,
    pub candidates: Vec<i32>,
    /// 1 = clicked, 0 = not, aligned with `candidates`; `None` for an unlabeled split.
    pub labels: Option<Vec<i8>>,
    /// News-id occurrences dropped because no news item has the id (`--drop-unknown-news`).
    pub dropped_unknown: u64,
}

/// How a reader's input numbers its rows, for errors that point at one.
#[derive(Debug, Clone, Copy)]
pub enum Origin {
    /// A text file: `file:line: field: reason`.
    Lines,
    /// A Parquet file: `file: row R: field: reason`, R 0-based as pyarrow and polars index.
    Rows,
}

impl Origin {
    /// Input row `number` (1-based) as its errors name it: `line 7`, `row 6`.
    pub fn name(self, number: u64) -> String {
        match self {
            Origin::Lines => format!("line {number}"),
            Origin::Rows => format!("row {}", number.saturating_sub(1)),
        }
    }

    /// The error about input row `number` (1-based) of `path`.
    pub fn error(self, path: &Path, number: u64, field: &str, reason: impl Into<String>) -> DataError {
        match self {
            Origin::Lines => DataError::parse(path, number, field, reason),
            Origin::Rows => DataError::Invalid {
                path: path.to_path_buf(),
                row: number.saturating_sub(1) as usize,
                field: field.to_string(),
                reason: reason.into(),
            },
        }
    }
}

/// A progress bar on stderr; indicatif draws nothing when stderr is not a terminal.
pub fn progress(len: u64, what: &str, units: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    let template = format!("{{msg:>20}} [{{bar:40}}] {units} {{eta}}");
    if let Ok(style) = ProgressStyle::with_template(&template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_string());
    bar
}

/// The manifest entry of `dir/rel`.
pub fn file_entry(dir: &Path, rel: &str, rows: u64) -> Result<FileEntry> {
    Ok(FileEntry { path: rel.to_string(), rows, sha256: sha256_file(&dir.join(rel))? })
}

/// Shards of a split of `rows` input rows: `--shards`, or one per 250,000 rows; at most one per row.
pub fn shard_count(requested: Option<usize>, rows: u64) -> usize {
    requested.unwrap_or_else(|| rows.div_ceil(AUTO_SHARD_ROWS) as usize).min(rows as usize)
}

/// Output of one split: its manifest entry, its report, its files.
pub type SplitOutput = (SplitInfo, SplitReport, Vec<FileEntry>);

/// Where one split goes and what its input is.
pub struct SplitTarget<'a> {
    /// The shards folder.
    pub dir: &'a Path,
    pub split: Split,
    /// The input file the rows come from, for errors.
    pub source: &'a Path,
    pub origin: Origin,
    /// Input rows (the last `Row::number`).
    pub rows: u64,
    pub shards: usize,
}

/// The open shard of a split.
enum Shard {
    Train(TrainWriter),
    Eval(EvalWriter),
}

impl Shard {
    fn finish(self) -> Result<u64, DataError> {
        match self {
            Shard::Train(w) => w.finish(),
            Shard::Eval(w) => w.finish(),
        }
    }
}

/// Streams one split into its shards in three stages, with bounded channels between them so that
/// memory stays flat: `read`, on a thread of its own, sends batches of input (or the error that
/// stopped it; a failed send means the consumer stopped with its own error); `parse`, here (on the
/// rayon pool), turns each batch into rows; [`write_split`], on a third thread, writes them with
/// `report`. The first error wins: reading's or parsing's, then writing's.
pub fn stream_split<B: Send>(
    target: &SplitTarget,
    report: SplitReport,
    users: &mut HashMap<String, i32>,
    read: impl FnOnce(mpsc::SyncSender<Result<B, DataError>>) + Send,
    mut parse: impl FnMut(B) -> Result<Vec<Row>, DataError>,
) -> Result<SplitOutput> {
    std::thread::scope(|scope| {
        let (tx, rx) = mpsc::sync_channel::<Result<B, DataError>>(4);
        scope.spawn(move || read(tx));
        let (rows_tx, rows_rx) = mpsc::sync_channel::<Vec<Row>>(2);
        let writer = scope.spawn(move || write_split(target, report, rows_rx, users));
        let parsed = (|| -> Result<(), DataError> {
            // When this returns early, `rx` is dropped and the reader's next send fails.
            for batch in rx {
                if rows_tx.send(parse(batch?)?).is_err() {
                    // The writer stopped; its error is returned below.
                    break;
                }
            }
            Ok(())
        })();
        drop(rows_tx);
        let source = target.source.display();
        let written = writer.join().map_err(|_| anyhow::anyhow!("{source}: writer thread panicked"))?;
        parsed?;
        written
    })
}

/// Writes the row batches of `rx` into the shards of `target`. `report` comes with the reader's
/// own counts and gets the writer's. Train's users are numbered in `users` as they first occur;
/// dev and test users not in it get 0.
pub fn write_split(
    target: &SplitTarget,
    mut report: SplitReport,
    rx: mpsc::Receiver<Vec<Row>>,
    users: &mut HashMap<String, i32>,
) -> Result<SplitOutput> {
    let SplitTarget { dir, split, source, origin, rows, shards } = *target;
    let split_dir = dir.join(split.name());
    std::fs::create_dir_all(&split_dir).map_err(|e| DataError::io(&split_dir, e))?;
    let boundary = |k: usize| (k as u64 * rows).div_ceil(shards as u64);
    let open = |k: usize| -> Result<Shard, DataError> {
        let p = split_dir.join(part_name(k));
        Ok(match split {
            Split::Train => Shard::Train(TrainWriter::create(&p)?),
            _ => Shard::Eval(EvalWriter::create(&p)?),
        })
    };
    let shard_path = |k: usize| format!("{}/{}", split.name(), part_name(k));
    let mut files = Vec::new();
    let mut shard_rows = 0u64;
    let mut current = (0usize, open(0)?);
    let mut written = 0u64;
    let mut labeled: Option<(bool, u64)> = None;

    for batch in rx {
        for row in batch {
            // The 0-based row index (number - 1) decides the shard.
            while row.number > boundary(current.0 + 1) {
                let next = current.0 + 1;
                let done = std::mem::replace(&mut current, (next, open(next)?));
                let rows = done.1.finish()?;
                files.push(file_entry(dir, &shard_path(done.0), rows)?);
                shard_rows += rows;
            }
            report.dropped_unknown_news += row.dropped_unknown;
            let is_labeled = row.labels.is_some();
            match labeled {
                None => labeled = Some((is_labeled, row.number)),
                Some((l, first)) if l != is_labeled => {
                    let reason = format!(
                        "{} but {} {}; a split is labeled throughout or not at all",
                        if is_labeled { "labeled" } else { "unlabeled" },
                        origin.name(first),
                        if l { "is labeled" } else { "is not" }
                    );
                    return Err(origin.error(source, row.number, "impressions", reason).into());
                }
                Some(_) => {}
            }
            match &mut current.1 {
                Shard::Train(w) => {
                    let Some(labels) = row.labels else {
                        let reason = "train impressions need labels (clicked or not)";
                        return Err(origin.error(source, row.number, "impressions", reason).into());
                    };
                    let next = users.len() as i32 + 1;
                    let user = *users.entry(row.user).or_insert(next);
                    let mut clicked = Vec::new();
                    let mut non_clicked = Vec::new();
                    for (&c, &l) in row.candidates.iter().zip(&labels) {
                        if l == 1 { clicked.push(c) } else { non_clicked.push(c) }
                    }
                    if clicked.is_empty() || non_clicked.is_empty() {
                        report.dropped_impressions += 1;
                        continue;
                    }
                    w.push(&TrainImpression {
                        impression_id: row.impression_id,
                        user,
                        time: row.time,
                        history: row.history,
                        clicked,
                        non_clicked,
                    })?;
                }
                Shard::Eval(w) => {
                    if row.candidates.is_empty() {
                        report.dropped_impressions += 1;
                        continue;
                    }
                    let user = users.get(&row.user).copied().unwrap_or(0);
                    w.push(&EvalImpression {
                        impression_id: row.impression_id,
                        user,
                        time: row.time,
                        history: row.history,
                        candidates: row.candidates,
                        labels: row.labels,
                    })?;
                }
            }
            written += 1;
        }
    }
    let last = current.1.finish()?;
    files.push(file_entry(dir, &shard_path(current.0), last)?);
    shard_rows += last;
    // Shards after the last impression written (the input's last rows were blank lines, or
    // impressions dropped) are still created, empty.
    for k in current.0 + 1..shards {
        files.push(file_entry(dir, &shard_path(k), open(k)?.finish()?)?);
    }
    debug_assert_eq!(shard_rows, written);
    if written == 0 {
        let reason = format!("no impression kept ({} dropped)", report.dropped_impressions);
        return Err(origin.error(source, rows, "impressions", reason).into());
    }
    let info = SplitInfo {
        impressions: written,
        labeled: labeled.is_none_or(|(l, _)| l),
        shards: files.iter().map(|f| f.path.clone()).collect(),
    };
    Ok((info, report, files))
}

//! `mtrec-prep mind`: MIND split folders to the shards of the data contract (see the
//! `mtrec-data` crate documentation for every file and column).
//!
//! Order of work: read and check every `news.tsv` (small: held in memory), build the category,
//! subcategory, NER-tag and entity vocabularies, tokenize all titles in parallel, write
//! `news.parquet` and `entity_embedding.parquet`; then stream each `behaviors.tsv` in chunks of
//! lines (a reader thread, a bounded queue, parallel parsing, one shard writer), so memory does not
//! grow with the file. Everything goes to a temporary folder next to `--out`, renamed at the end.

use std::collections::{HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use mtrec_data::mind::{MindEntity, parse_behavior_line, parse_news_line, parse_vec_line};
use mtrec_data::write::{EntityWriter, EvalWriter, NewsRow, NewsWriter, TrainWriter, part_name};
use mtrec_data::{
    DataError, EvalImpression, FORMAT_VERSION, FileEntry, MANIFEST_FILE, Manifest, NerScheme, PrepReport,
    Split, SplitInfo, SplitReport, Splits, TrainImpression, sha256_file, tokenizer_identity,
};
use rayon::prelude::*;

use crate::staged::Staged;
use crate::tokenize::{NerStats, TitleTokenizer, ner_tags};

/// Lines per chunk handed from the reader thread to the parsers.
const CHUNK_LINES: usize = 8192;
/// Impressions per shard when `--shards` is not given.
const AUTO_SHARD_ROWS: u64 = 250_000;

/// Options of `mtrec-prep mind`.
#[derive(Debug, Clone)]
pub struct MindOptions {
    /// MIND train folder.
    pub train: PathBuf,
    /// MIND dev folder.
    pub dev: PathBuf,
    /// MIND test folder, if any.
    pub test: Option<PathBuf>,
    /// Model folder with `tokenizer.json` or `vocab.txt`.
    pub model: PathBuf,
    /// Output shards folder.
    pub out: PathBuf,
    /// Shards per split (`None`: one per 250,000 impressions).
    pub shards: Option<usize>,
    /// Word pieces per title including `[CLS]` and `[SEP]`.
    pub max_title_len: usize,
    /// History entries kept (the most recent).
    pub max_history: usize,
    /// Drop (and count) news ids no news.tsv defines instead of failing.
    pub drop_unknown_news: bool,
    /// NER tag scheme (`NerScheme::None` with `titles`).
    pub ner_scheme: NerScheme,
    /// A news.tsv-like file of translated titles (xMIND: `news_id \t title \t abstract`) that
    /// replace every news item's title, by news id.
    pub titles: Option<PathBuf>,
    /// Replace a non-empty `--out`.
    pub force: bool,
}

/// One news item as read from a news.tsv.
struct News {
    news_id: String,
    category: String,
    subcategory: String,
    title: String,
    entities: Vec<MindEntity>,
    content_hash: u64,
}

/// A progress bar on stderr; indicatif draws nothing when stderr is not a terminal.
fn progress(len: u64, what: &str, units: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    let template = format!("{{msg:>20}} [{{bar:40}}] {units} {{eta}}");
    if let Ok(style) = ProgressStyle::with_template(&template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_string());
    bar
}

fn split_dir(opts: &MindOptions, split: Split) -> Option<&Path> {
    match split {
        Split::Train => Some(&opts.train),
        Split::Dev => Some(&opts.dev),
        Split::Test => opts.test.as_deref(),
    }
}

/// Runs the whole prep into a staged folder ([`Staged`]): on error nothing is left at `--out`.
pub fn run(opts: &MindOptions) -> Result<Manifest> {
    let started = Instant::now();
    let staged = Staged::new(&opts.out, opts.force)?;
    let mut manifest = prep_into(opts, staged.path())?;
    manifest.prep_report.elapsed_seconds = started.elapsed().as_secs_f64();
    let text = serde_json::to_string_pretty(&manifest).context("serializing manifest.json")?;
    std::fs::write(staged.path().join(MANIFEST_FILE), text).context("writing manifest.json")?;
    staged.publish()?;
    Ok(manifest)
}

fn prep_into(opts: &MindOptions, dir: &Path) -> Result<Manifest> {
    let started = Instant::now();
    let tokenizer_sha256 = tokenizer_identity(&opts.model)?;
    let tokenizer = TitleTokenizer::load(&opts.model, opts.max_title_len)?;
    let mut report = PrepReport::default();

    // 1. News of every split; the first definition of an id wins.
    let mut news: Vec<News> = Vec::new();
    let mut nid_of: HashMap<String, i32> = HashMap::new();
    for split in [Split::Train, Split::Dev, Split::Test] {
        let Some(folder) = split_dir(opts, split) else { continue };
        for item in read_news_file(&folder.join("news.tsv"))? {
            match nid_of.get(&item.news_id) {
                Some(&nid) => {
                    if news[nid as usize - 1].content_hash != item.content_hash {
                        report.duplicate_news_differing += 1;
                        if report.duplicate_news_examples.len() < 20 {
                            report.duplicate_news_examples.push(item.news_id.clone());
                        }
                    }
                }
                None => {
                    let nid = i32::try_from(news.len() + 1).context("more than 2^31 news")?;
                    nid_of.insert(item.news_id.clone(), nid);
                    news.push(item);
                }
            }
        }
    }
    if report.duplicate_news_differing > 0 {
        tracing::warn!(
            count = report.duplicate_news_differing,
            examples = ?report.duplicate_news_examples,
            "news ids defined with different content in two places; the first definition is kept"
        );
    }

    tracing::info!(news = news.len(), elapsed_s = started.elapsed().as_secs_f64(), "news read");
    let ner_scheme = match &opts.titles {
        Some(path) => {
            replace_titles(&mut news, path)?;
            NerScheme::None
        }
        None => opts.ner_scheme,
    };

    // 2. Vocabularies.
    let vocab = |f: fn(&News) -> &str| -> Vec<String> {
        let mut v: Vec<String> =
            news.iter().map(f).collect::<HashSet<_>>().into_iter().map(String::from).collect();
        v.sort();
        v
    };
    let categories = vocab(|n| &n.category);
    let subcategories = vocab(|n| &n.subcategory);
    let index = |v: &[String]| -> HashMap<String, i32> {
        v.iter().enumerate().map(|(i, s)| (s.clone(), i as i32)).collect()
    };
    let (cat_id, sub_id) = (index(&categories), index(&subcategories));
    let ner_tag_names: Vec<String> = match ner_scheme {
        NerScheme::None => vec!["O".into()],
        NerScheme::Bio => vec!["O".into(), "B".into(), "I".into()],
        NerScheme::Typed => {
            let mut kinds: Vec<&str> = news
                .iter()
                .flat_map(|n| n.entities.iter().map(|e| e.kind.as_str()))
                .collect::<HashSet<_>>()
                .into_iter()
                .collect();
            kinds.sort();
            std::iter::once("O".to_string())
                .chain(kinds.iter().flat_map(|k| [format!("B-{k}"), format!("I-{k}")]))
                .collect()
        }
    };
    if ner_tag_names.len() > 127 {
        bail!(
            "{} NER tags do not fit in int8 (too many entity types for --ner-scheme typed)",
            ner_tag_names.len()
        );
    }
    let tag_index: HashMap<&str, (i8, i8)> = match ner_scheme {
        NerScheme::Bio | NerScheme::None => HashMap::new(),
        NerScheme::Typed => ner_tag_names
            .iter()
            .enumerate()
            .filter_map(|(i, t)| t.strip_prefix("B-").map(|k| (k, (i as i8, i as i8 + 1))))
            .collect(),
    };
    let tag_ids = |kind: &str| -> (i8, i8) { tag_index.get(kind).copied().unwrap_or((1, 2)) };

    // 3. Entity vectors of every split (the first vector of an id wins).
    let mut vectors: HashMap<String, Vec<f32>> = HashMap::new();
    let mut entity_dim: Option<(usize, PathBuf)> = None;
    for split in [Split::Train, Split::Dev, Split::Test] {
        let Some(folder) = split_dir(opts, split) else { continue };
        read_vec_file(&folder.join("entity_embedding.vec"), &mut vectors, &mut entity_dim)?;
    }
    let entity_dim = entity_dim.map_or(100, |(d, _)| d);

    // 4. Tokenize and tag every title in parallel.
    let bar = progress(news.len() as u64, "tokenizing titles", "{pos}/{len}");
    let encoded: Vec<(Vec<i32>, Vec<i8>, NerStats)> = news
        .par_chunks(512)
        .map(|chunk| {
            let out = chunk
                .iter()
                .map(|n| {
                    let tokens = tokenizer.encode(&n.title).with_context(|| format!("news {}", n.news_id))?;
                    let mut stats = NerStats::default();
                    let tags = match ner_scheme {
                        NerScheme::None => vec![-1; tokens.ids.len()],
                        _ => ner_tags(&n.title, &tokens, &n.entities, tag_ids, &mut stats),
                    };
                    Ok((tokens.ids, tags, stats))
                })
                .collect::<Result<Vec<_>>>();
            bar.inc(chunk.len() as u64);
            out
        })
        .collect::<Vec<_>>()
        .into_iter()
        .collect::<Result<Vec<Vec<_>>>>()?
        .into_iter()
        .flatten()
        .collect();
    bar.finish_and_clear();
    tracing::info!(elapsed_s = started.elapsed().as_secs_f64(), "titles tokenized");

    // 5. news.parquet and entity_embedding.parquet.
    let mut files = Vec::new();
    let mut ner = NerStats::default();
    let mut entity_row: HashMap<&str, i32> = HashMap::new();
    let mut entity_writer = EntityWriter::create(&dir.join("entity_embedding.parquet"))?;
    let mut news_writer = NewsWriter::create(&dir.join("news.parquet"))?;
    for (i, (n, (ids, tags, stats))) in news.iter().zip(encoded).enumerate() {
        ner += stats;
        let mut entities = Vec::new();
        for e in &n.entities {
            let Some(v) = vectors.get(&e.wikidata_id) else {
                report.entities_without_vector += 1;
                continue;
            };
            let next = entity_row.len() as i32 + 1;
            let row = *entity_row.entry(&e.wikidata_id).or_insert_with(|| {
                entity_writer.push(&e.wikidata_id, v);
                next
            });
            if !entities.contains(&row) {
                entities.push(row);
            }
        }
        news_writer.push(&NewsRow {
            nid: i as i32 + 1,
            news_id: n.news_id.clone(),
            category: cat_id[&n.category],
            subcategory: sub_id[&n.subcategory],
            title: n.title.clone(),
            input_ids: ids,
            ner_tags: tags,
            entities,
        })?;
    }
    let num_entities = entity_writer.finish()?;
    files.push(file_entry(dir, "entity_embedding.parquet", num_entities)?);
    files.push(file_entry(dir, "news.parquet", news_writer.finish()?)?);
    report.ner_occurrences = ner.occurrences;
    report.ner_located_by_search = ner.located_by_search;
    report.ner_dropped = ner.dropped;
    report.ner_truncated = ner.truncated;

    // 6. Behaviors, streamed.
    let mut users: HashMap<String, i32> = HashMap::new();
    let mut splits = Splits::default();
    for split in [Split::Train, Split::Dev, Split::Test] {
        let Some(folder) = split_dir(opts, split) else { continue };
        let ctx = BehaviorsCtx { opts, nid_of: &nid_of, dir };
        let (info, split_report, split_files) = ctx.run(split, &folder.join("behaviors.tsv"), &mut users)?;
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

    Ok(Manifest {
        format_version: FORMAT_VERSION,
        tokenizer_sha256,
        max_title_len: opts.max_title_len as u32,
        max_history: opts.max_history as u32,
        categories,
        subcategories,
        ner_scheme,
        ner_tags: ner_tag_names,
        num_news: news.len() as u64,
        num_users: users.len() as u64,
        entity_dim: entity_dim as u32,
        num_entities,
        files,
        splits,
        prep_report: report,
    })
}

fn file_entry(dir: &Path, rel: &str, rows: u64) -> Result<FileEntry> {
    Ok(FileEntry { path: rel.to_string(), rows, sha256: sha256_file(&dir.join(rel))? })
}

/// Parses every line of a news.tsv on the rayon pool. Like the other parallel parses here, the
/// results are collected in line order before the first error is taken: rayon's own collect into
/// a `Result` returns whichever error it meets, not the first bad line's.
/// Replaces each news item's title by its translation in `path` (lines `news_id \t title`, any
/// further columns ignored, as xMIND's files have them). A news item without a translation is an
/// error naming it; translations of ids no news.tsv defines are counted in the log.
fn replace_titles(news: &mut [News], path: &Path) -> Result<()> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    let mut translated: HashMap<&str, &str> = HashMap::new();
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let line_no = i as u64 + 1;
        let line = std::str::from_utf8(raw)
            .map_err(|e| DataError::parse(path, line_no, "line", format!("not valid UTF-8: {e}")))?;
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        let mut columns = line.split('\t');
        let id = columns.next().unwrap_or_default();
        let title = columns.next().ok_or_else(|| {
            DataError::parse(path, line_no, "title", "missing: expected `news_id<TAB>title`")
        })?;
        if id.is_empty() || title.trim().is_empty() {
            let field = if id.is_empty() { "news_id" } else { "title" };
            return Err(DataError::parse(path, line_no, field, "empty").into());
        }
        if translated.insert(id, title).is_some() {
            return Err(DataError::parse(path, line_no, "news_id", format!("{id} translated twice")).into());
        }
    }
    for n in news.iter_mut() {
        let title = translated.remove(n.news_id.as_str()).ok_or_else(|| {
            anyhow::anyhow!(
                "{}: no translated title for news {} (of the MIND news.tsv files)",
                path.display(),
                n.news_id
            )
        })?;
        n.title = title.to_string();
    }
    tracing::info!(
        replaced = news.len(),
        unused = translated.len(),
        "titles replaced by {}; NER labels off (MIND's entity offsets index the English titles)",
        path.display()
    );
    Ok(())
}

fn read_news_file(path: &Path) -> Result<Vec<News>> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    let lines: Vec<&[u8]> = bytes.split_inclusive(|&b| b == b'\n').collect();
    let parsed: Vec<News> = lines
        .par_iter()
        .enumerate()
        .map(|(i, raw)| {
            let line_no = i as u64 + 1;
            let line = std::str::from_utf8(raw)
                .map_err(|e| DataError::parse(path, line_no, "line", format!("not valid UTF-8: {e}")))?;
            let n = parse_news_line(path, line_no, line)?;
            let mut h = DefaultHasher::new();
            n.content.hash(&mut h);
            Ok(News {
                news_id: n.news_id.to_string(),
                category: n.category.to_string(),
                subcategory: n.subcategory.to_string(),
                title: n.title.to_string(),
                entities: n.title_entities,
                content_hash: h.finish(),
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .collect::<Result<_, DataError>>()?;
    Ok(parsed)
}

fn read_vec_file(
    path: &Path,
    vectors: &mut HashMap<String, Vec<f32>>,
    dim: &mut Option<(usize, PathBuf)>,
) -> Result<()> {
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut reader = BufReader::new(file);
    let mut buf = Vec::new();
    let mut line_no = 0u64;
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf).map_err(|e| DataError::io(path, e))? == 0 {
            return Ok(());
        }
        line_no += 1;
        let line = std::str::from_utf8(&buf)
            .map_err(|e| DataError::parse(path, line_no, "line", format!("not valid UTF-8: {e}")))?;
        if line.trim().is_empty() {
            continue;
        }
        let (id, v) = parse_vec_line(path, line_no, line)?;
        match dim {
            Some((d, first)) if *d != v.len() => {
                return Err(DataError::parse(
                    path,
                    line_no,
                    "vector",
                    format!("{} values, but {} has {d}", v.len(), first.display()),
                )
                .into());
            }
            Some(_) => {}
            None => *dim = Some((v.len(), path.to_path_buf())),
        }
        vectors.entry(id.to_string()).or_insert(v);
    }
}

/// A chunk of whole lines from the reader thread.
struct Chunk {
    first_line: u64,
    text: Vec<u8>,
}

/// One behaviors line after parsing and news-id resolution.
struct Parsed {
    line_no: u64,
    impression_id: i64,
    user: String,
    time: i64,
    history: Vec<i32>,
    candidates: Vec<i32>,
    labels: Option<Vec<i8>>,
    dropped_unknown: u64,
}

struct BehaviorsCtx<'a> {
    opts: &'a MindOptions,
    nid_of: &'a HashMap<String, i32>,
    dir: &'a Path,
}

/// Output of one split: its manifest entry, its report, its files.
type SplitOutput = (SplitInfo, SplitReport, Vec<FileEntry>);

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

impl BehaviorsCtx<'_> {
    fn resolve(
        &self,
        path: &Path,
        line_no: u64,
        field: &str,
        id: &str,
        dropped: &mut u64,
    ) -> Result<Option<i32>, DataError> {
        match self.nid_of.get(id) {
            Some(&nid) => Ok(Some(nid)),
            None if self.opts.drop_unknown_news => {
                *dropped += 1;
                Ok(None)
            }
            None => Err(DataError::parse(
                path,
                line_no,
                field,
                format!(
                    "news id `{id}` is defined by no news.tsv (pass --drop-unknown-news to drop such ids)"
                ),
            )),
        }
    }

    fn parse(&self, path: &Path, line_no: u64, raw: &[u8]) -> Result<Parsed, DataError> {
        let line = std::str::from_utf8(raw)
            .map_err(|e| DataError::parse(path, line_no, "line", format!("not valid UTF-8: {e}")))?;
        let b = parse_behavior_line(path, line_no, line)?;
        let mut dropped = 0;
        let mut history = Vec::with_capacity(b.history.len().min(self.opts.max_history));
        for id in &b.history {
            if let Some(nid) = self.resolve(path, line_no, "history", id, &mut dropped)? {
                history.push(nid);
            }
        }
        if history.len() > self.opts.max_history {
            history.drain(..history.len() - self.opts.max_history);
        }
        let mut candidates = Vec::with_capacity(b.impressions.len());
        let mut labels = Vec::with_capacity(b.impressions.len());
        let labeled = b.impressions[0].1.is_some();
        for (id, label) in &b.impressions {
            if let Some(nid) = self.resolve(path, line_no, "impressions", id, &mut dropped)? {
                candidates.push(nid);
                labels.push(label.unwrap_or(0));
            }
        }
        Ok(Parsed {
            line_no,
            impression_id: b.impression_id,
            user: b.user.to_string(),
            time: b.time,
            history,
            candidates,
            labels: labeled.then_some(labels),
            dropped_unknown: dropped,
        })
    }

    fn run(&self, split: Split, path: &Path, users: &mut HashMap<String, i32>) -> Result<SplitOutput> {
        let total_bytes = std::fs::metadata(path).map_err(|e| DataError::io(path, e))?.len();
        let lines = count_lines(path)?;
        if lines == 0 {
            return Err(DataError::parse(path, 1, "impressions", "the file is empty").into());
        }
        let shards = match self.opts.shards {
            Some(n) => n,
            None => lines.div_ceil(AUTO_SHARD_ROWS) as usize,
        }
        .min(lines as usize);
        let bar = progress(total_bytes, &format!("{} behaviors", split.name()), "{bytes}/{total_bytes}");
        // Three stages: a reader thread, parsing on the rayon pool (here), a writer thread; the
        // bounded channels between them keep memory flat.
        let output = std::thread::scope(|scope| -> Result<SplitOutput> {
            let (tx, rx) = mpsc::sync_channel::<Result<Chunk, DataError>>(4);
            scope.spawn(move || read_chunks(path, &tx));
            let (ptx, prx) = mpsc::sync_channel::<Vec<Parsed>>(2);
            let writer = scope.spawn(move || self.write_split(split, path, lines, shards, prx, users));
            let parsed = (|| -> Result<(), DataError> {
                // When this returns early, `rx` is dropped and the reader's next send fails.
                for chunk in rx {
                    let chunk = chunk?;
                    bar.inc(chunk.text.len() as u64);
                    let lines: Vec<&[u8]> = chunk.text.split_inclusive(|&b| b == b'\n').collect();
                    let parsed: Vec<Parsed> = lines
                        .par_iter()
                        .enumerate()
                        .map(|(i, raw)| self.parse(path, chunk.first_line + i as u64, raw))
                        .collect::<Vec<_>>()
                        .into_iter()
                        .collect::<Result<_, DataError>>()?;
                    if ptx.send(parsed).is_err() {
                        // The writer stopped; its error is returned below.
                        break;
                    }
                }
                Ok(())
            })();
            drop(ptx);
            let written =
                writer.join().map_err(|_| anyhow::anyhow!("{}: writer thread panicked", path.display()))?;
            parsed?;
            written
        })?;
        bar.finish_and_clear();
        Ok(output)
    }

    /// Writes the parsed chunks of one split into its shards.
    fn write_split(
        &self,
        split: Split,
        path: &Path,
        lines: u64,
        shards: usize,
        rx: mpsc::Receiver<Vec<Parsed>>,
        users: &mut HashMap<String, i32>,
    ) -> Result<SplitOutput> {
        let split_dir = self.dir.join(split.name());
        std::fs::create_dir_all(&split_dir).map_err(|e| DataError::io(&split_dir, e))?;
        // Shard k holds lines [k*lines/shards, (k+1)*lines/shards).
        let boundary = |k: usize| (k as u64 * lines).div_ceil(shards as u64);
        let open = |k: usize| -> Result<Shard, DataError> {
            let p = split_dir.join(part_name(k));
            Ok(match split {
                Split::Train => Shard::Train(TrainWriter::create(&p)?),
                _ => Shard::Eval(EvalWriter::create(&p)?),
            })
        };
        let mut files = Vec::new();
        let mut shard_rows = 0u64;
        let mut current = (0usize, open(0)?);
        let mut report = SplitReport { lines, ..Default::default() };
        let mut written = 0u64;
        let mut labeled: Option<(bool, u64)> = None;

        for parsed in rx {
            for p in parsed {
                // The 0-based line index (line_no - 1) decides the shard.
                while p.line_no > boundary(current.0 + 1) {
                    let next = current.0 + 1;
                    let done = std::mem::replace(&mut current, (next, open(next)?));
                    let rows = done.1.finish()?;
                    files.push(file_entry(
                        self.dir,
                        &format!("{}/{}", split.name(), part_name(done.0)),
                        rows,
                    )?);
                    shard_rows += rows;
                }
                report.dropped_unknown_news += p.dropped_unknown;
                let is_labeled = p.labels.is_some();
                match labeled {
                    None => labeled = Some((is_labeled, p.line_no)),
                    Some((l, first)) if l != is_labeled => {
                        return Err(DataError::parse(
                            path,
                            p.line_no,
                            "impressions",
                            format!(
                                "{} but line {first} {}; a split is labeled throughout or not at all",
                                if is_labeled { "labeled" } else { "unlabeled" },
                                if l { "is labeled" } else { "is not" }
                            ),
                        )
                        .into());
                    }
                    Some(_) => {}
                }
                match &mut current.1 {
                    Shard::Train(w) => {
                        let Some(labels) = p.labels else {
                            return Err(DataError::parse(
                                path,
                                p.line_no,
                                "impressions",
                                "train impressions need labels (`N123-1`)",
                            )
                            .into());
                        };
                        let next = users.len() as i32 + 1;
                        let user = *users.entry(p.user).or_insert(next);
                        let mut clicked = Vec::new();
                        let mut non_clicked = Vec::new();
                        for (&c, &l) in p.candidates.iter().zip(&labels) {
                            if l == 1 { clicked.push(c) } else { non_clicked.push(c) }
                        }
                        if clicked.is_empty() || non_clicked.is_empty() {
                            report.dropped_impressions += 1;
                            continue;
                        }
                        w.push(&TrainImpression {
                            impression_id: p.impression_id,
                            user,
                            time: p.time,
                            history: p.history,
                            clicked,
                            non_clicked,
                        })?;
                    }
                    Shard::Eval(w) => {
                        if p.candidates.is_empty() {
                            report.dropped_impressions += 1;
                            continue;
                        }
                        let user = users.get(&p.user).copied().unwrap_or(0);
                        w.push(&EvalImpression {
                            impression_id: p.impression_id,
                            user,
                            time: p.time,
                            history: p.history,
                            candidates: p.candidates,
                            labels: p.labels,
                        })?;
                    }
                }
                written += 1;
            }
        }
        let rows = current.1.finish()?;
        files.push(file_entry(self.dir, &format!("{}/{}", split.name(), part_name(current.0)), rows)?);
        shard_rows += rows;
        // Shards after the last impression (the file ends in blank lines) are still created, empty.
        for k in current.0 + 1..shards {
            files.push(file_entry(
                self.dir,
                &format!("{}/{}", split.name(), part_name(k)),
                open(k)?.finish()?,
            )?);
        }
        debug_assert_eq!(shard_rows, written);
        if written == 0 {
            let reason = format!("no impression kept ({} dropped)", report.dropped_impressions);
            return Err(DataError::parse(path, lines, "impressions", reason).into());
        }
        let info = SplitInfo {
            impressions: written,
            labeled: labeled.is_none_or(|(l, _)| l),
            shards: files.iter().map(|f| f.path.clone()).collect(),
        };
        Ok((info, report, files))
    }
}

fn count_lines(path: &Path) -> Result<u64, DataError> {
    let mut file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut buf = vec![0u8; 1 << 20];
    let (mut lines, mut last) = (0u64, b'\n');
    loop {
        let n = file.read(&mut buf).map_err(|e| DataError::io(path, e))?;
        if n == 0 {
            break;
        }
        lines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
        last = buf[n - 1];
    }
    Ok(if last == b'\n' { lines } else { lines + 1 })
}

/// Sends `path` in chunks of whole lines, or the error that stopped reading.
fn read_chunks(path: &Path, tx: &mpsc::SyncSender<Result<Chunk, DataError>>) {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) => {
            let _ = tx.send(Err(DataError::io(path, e)));
            return;
        }
    };
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut next_line = 1u64;
    loop {
        let mut chunk = Chunk { first_line: next_line, text: Vec::with_capacity(1 << 20) };
        let mut n = 0;
        while n < CHUNK_LINES {
            let read = match reader.read_until(b'\n', &mut chunk.text) {
                Ok(r) => r,
                Err(e) => {
                    // A failed send means the consumer already stopped with its own error.
                    let _ = tx.send(Err(DataError::parse(path, next_line, "line", e.to_string())));
                    return;
                }
            };
            if read == 0 {
                break;
            }
            n += 1;
            next_line += 1;
        }
        if n == 0 || tx.send(Ok(chunk)).is_err() {
            return;
        }
    }
}

//! `mtrec-prep mind`: MIND split folders to the shards of the data contract (see the
//! `mtrec-data` crate documentation for every file and column).
//!
//! Order of work: read and check every `news.tsv` and `entity_embedding.vec` (small: held in
//! memory) and hand them to the news stage ([`crate::news`]); then stream each `behaviors.tsv` in
//! chunks of lines (a reader thread, a bounded queue, parallel parsing, the shard writer of
//! [`crate::shards`]), so memory does not grow with the file. Everything goes to a temporary folder next to
//! `--out`, renamed at the end.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;

use anyhow::Result;
use mtrec_data::mind::{parse_behavior_line, parse_news_line, parse_vec_line};
use mtrec_data::{
    DataError, FORMAT_VERSION, Manifest, NerScheme, PrepReport, Split, SplitReport, Splits,
    tokenizer_identity,
};
use rayon::prelude::*;

use crate::news::{Article, NewsTable, write_news};
use crate::shards::{
    Origin, PrepOptions, Row, SplitOutput, SplitTarget, progress, publish_shards, record_split, shard_count,
    stream_split,
};
use crate::tokenize::TitleTokenizer;

/// Lines per chunk handed from the reader thread to the parsers.
const CHUNK_LINES: usize = 8192;

/// Options of `mtrec-prep mind`.
#[derive(Debug, Clone)]
pub struct MindOptions {
    /// The split folders (`news.tsv`, `behaviors.tsv`, `entity_embedding.vec`) and the rest.
    pub prep: PrepOptions,
    /// A news.tsv-like file of translated titles (xMIND: `news_id \t title \t abstract`) that
    /// replace every news item's title, by news id (the shards then have no NER labels).
    pub titles: Option<PathBuf>,
}

/// Runs the whole prep into a staged folder: on error nothing is left at `--out`.
pub fn run(opts: &MindOptions) -> Result<Manifest> {
    publish_shards(&opts.prep.out, opts.prep.force, |dir| prep_into(opts, dir))
}

fn prep_into(mind: &MindOptions, dir: &Path) -> Result<Manifest> {
    let opts = &mind.prep;
    let started = Instant::now();
    let tokenizer_sha256 = tokenizer_identity(&opts.model)?;
    let tokenizer = TitleTokenizer::load(&opts.model, opts.max_title_len)?;
    let mut report = PrepReport::default();

    // 1. News of every split; the first definition of an id wins.
    let mut table = NewsTable::default();
    for (_, folder) in opts.folders() {
        for item in read_news_file(&folder.join("news.tsv"))? {
            table.add(item, &mut report)?;
        }
    }
    NewsTable::warn_duplicates(&report);
    tracing::info!(news = table.news.len(), elapsed_s = started.elapsed().as_secs_f64(), "news read");
    let ner_scheme = match &mind.titles {
        Some(path) => {
            replace_titles(&mut table.news, path)?;
            NerScheme::None
        }
        None => opts.ner_scheme,
    };

    // 2. Entity vectors of every split (the first vector of an id wins).
    let mut vectors: HashMap<String, Vec<f32>> = HashMap::new();
    let mut entity_dim: Option<(usize, PathBuf)> = None;
    for (_, folder) in opts.folders() {
        read_vec_file(&folder.join("entity_embedding.vec"), &mut vectors, &mut entity_dim)?;
    }
    let entity_dim = entity_dim.map_or(100, |(d, _)| d);

    // 3. news.parquet and entity_embedding.parquet.
    let written = write_news(dir, &table.news, &tokenizer, ner_scheme, &Some(vectors), &mut report)?;
    let mut files = written.files;

    // 4. Behaviors, streamed.
    let mut users: HashMap<String, i32> = HashMap::new();
    let mut splits = Splits::default();
    for (split, folder) in opts.folders() {
        let ctx = BehaviorsCtx { opts, nid_of: &table.nid_of, dir };
        let output = ctx.run(split, &folder.join("behaviors.tsv"), &mut users)?;
        record_split(&mut splits, &mut report, &mut files, split, output, started);
    }

    Ok(Manifest {
        format_version: FORMAT_VERSION,
        tokenizer_sha256,
        max_title_len: opts.max_title_len as u32,
        max_history: opts.max_history as u32,
        categories: written.categories,
        subcategories: written.subcategories,
        ner_scheme,
        ner_tags: written.ner_tags,
        num_news: table.news.len() as u64,
        num_users: users.len() as u64,
        entity_dim: entity_dim as u32,
        num_entities: written.num_entities,
        files,
        splits,
        prep_report: report,
    })
}

/// Replaces each news item's title by its translation in `path` (lines `news_id \t title`, any
/// further columns ignored, as xMIND's files have them). A news item without a translation is an
/// error naming it; translations of ids no news.tsv defines are counted in the log.
fn replace_titles(news: &mut [Article], path: &Path) -> Result<()> {
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

/// Parses every line of a news.tsv on the rayon pool. Like the other parallel parses here, the
/// results are collected in line order before the first error is taken: rayon's own collect into
/// a `Result` returns whichever error it meets, not the first bad line's.
fn read_news_file(path: &Path) -> Result<Vec<Article>> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    let lines: Vec<&[u8]> = bytes.split_inclusive(|&b| b == b'\n').collect();
    let parsed: Vec<Article> = lines
        .par_iter()
        .enumerate()
        .map(|(i, raw)| {
            let line_no = i as u64 + 1;
            let line = std::str::from_utf8(raw)
                .map_err(|e| DataError::parse(path, line_no, "line", format!("not valid UTF-8: {e}")))?;
            let n = parse_news_line(path, line_no, line)?;
            let mut h = DefaultHasher::new();
            n.content.hash(&mut h);
            Ok(Article {
                news_id: n.news_id.to_string(),
                category: n.category.to_string(),
                subcategory: n.subcategory.to_string(),
                title: n.title.to_string(),
                entities: Some(n.title_entities),
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

struct BehaviorsCtx<'a> {
    opts: &'a PrepOptions,
    nid_of: &'a HashMap<String, i32>,
    dir: &'a Path,
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

    fn parse(&self, path: &Path, line_no: u64, raw: &[u8]) -> Result<Row, DataError> {
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
        Ok(Row {
            number: line_no,
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
        let target = SplitTarget {
            dir: self.dir,
            split,
            source: path,
            origin: Origin::Lines,
            rows: lines,
            shards: shard_count(self.opts.shards, lines),
        };
        let bar = progress(total_bytes, &format!("{} behaviors", split.name()), "{bytes}/{total_bytes}");
        let report = SplitReport { lines, ..Default::default() };
        let output = stream_split(
            &target,
            report,
            users,
            |tx| read_chunks(path, &tx),
            |chunk: Chunk| {
                bar.inc(chunk.text.len() as u64);
                let lines: Vec<&[u8]> = chunk.text.split_inclusive(|&b| b == b'\n').collect();
                lines
                    .par_iter()
                    .enumerate()
                    .map(|(i, raw)| self.parse(path, chunk.first_line + i as u64, raw))
                    .collect::<Vec<_>>()
                    .into_iter()
                    .collect()
            },
        )?;
        bar.finish_and_clear();
        Ok(output)
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

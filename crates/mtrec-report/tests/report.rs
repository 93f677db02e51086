//! `write_report` and `compare` on run directories built like the trainer's: every PNG decodes,
//! is not blank and holds its series' line colours; report.md holds the final metrics and the
//! changed config fields; a resume's repeated steps give one curve; compare shows Table 1.

use mtrec_report::{FIGURES, Metrics, PALETTE, compare, write_report};
use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The resolved default config as the trainer writes it (`Config::default().to_toml()`).
const DEFAULTS: &str = r#"
[model]
path = ""
init = "pretrained"
dropout = 0.1
amf = false
trainable_layers = 0
layers = 0
hidden_size = 0
heads = 0
intermediate_size = 0

[model.user_encoder]
kind = "additive"

[data]
shards = "shards"
history = 50
negatives = 4
prefetch = 4

[train]
run_dir = "runs/mtrec"
batch_size = 32
max_steps = 1000
seed = 42
device = "auto"
precision = "f32"

[mtl]
category = true
ner = true
lambda = 0.3
surgery = "mtrec"

[optim]
lr_bert = 2e-5
lr_task = 1e-4
weight_decay = 0.01
beta1 = 0.9
beta2 = 0.999
eps = 1e-8
warmup_steps = 0
max_grad_norm = 1.0

[eval]
every = 0
split = "dev"
news_batch = 256
user_batch = 256
max_impressions = 0

[checkpoint]
every = 0
keep = 2

[log]
every = 10

[dist]
timeout_s = 900
"#;

/// The resolved config of a run of `configs/tiny.toml` with `changes` applied (`section.key`,
/// TOML value): the defaults, overlaid with tiny's fields, then the changes.
fn config(run_dir: &Path, changes: &[(&str, &str)]) -> String {
    let tiny = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/tiny.toml");
    let tiny: toml::Table = toml::from_str(&std::fs::read_to_string(tiny).unwrap()).unwrap();
    let mut table: toml::Table = toml::from_str(DEFAULTS).unwrap();
    let mut all: Vec<(String, toml::Value)> = tiny
        .iter()
        .flat_map(|(section, keys)| {
            keys.as_table().unwrap().iter().map(move |(k, v)| (format!("{section}.{k}"), v.clone()))
        })
        .collect();
    all.push(("train.run_dir".into(), toml::Value::String(run_dir.display().to_string())));
    for (key, value) in changes {
        let value: toml::Table = toml::from_str(&format!("v = {value}")).unwrap();
        all.push((key.to_string(), value["v"].clone()));
    }
    for (key, value) in all {
        let (section, field) = key.split_once('.').unwrap();
        table[section].as_table_mut().unwrap().insert(field.into(), value);
    }
    toml::to_string_pretty(&table).unwrap()
}

/// The final (and best) dev AUC of a [`run_dir`] made with `seed`.
fn final_auc(seed: u64) -> f64 {
    0.55 + 0.012 * 8.0 + seed as f64 * 0.001
}

/// A run directory like a 40-step tiny run logged every 5 steps, evaluated every 10, resumed
/// from the step-20 checkpoint after logging step 25 (steps 20 and 25 are in the file twice, as
/// a trainer that did not truncate would leave them), with `best.json` and two checkpoints.
fn run_dir(root: &Path, name: &str, aux: bool, changes: &[(&str, &str)], seed: u64) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let mut lines = String::new();
    let t0 = 1_780_000_000.0;
    // the first attempt's values are offset (so a test can tell them apart); the resume starts
    // 20 s later
    let record = |lines: &mut String, step: u64, first_attempt: bool| {
        let offset = if first_attempt { 0.3 } else { 0.0 };
        let s = step as f64;
        let null = |v: f64| if aux { format!("{v}") } else { "null".into() };
        let _ = writeln!(
            lines,
            "{{\"step\":{step},\"epoch\":{},\"loss_main\":{},\"loss_category\":{},\"loss_ner\":{},\
             \"cos_main_aux\":{},\"conflict\":{},\"conflict_rate\":{},\"grad_norm_main\":0.5,\
             \"grad_norm_aux\":{},\"grad_norm\":0.6,\"lr_bert\":{},\"lr_task\":{},\
             \"samples_per_s\":{},\"tokens_per_s\":{},\"time\":{}}}",
            (step - 1) / 16,
            1.6 - 0.02 * s + offset,
            null(2.6 - 0.03 * s),
            null(0.7 - 0.01 * s),
            null(0.1 - 0.004 * s + 0.05 * (s / 3.0).sin()),
            null(if step.is_multiple_of(10) { 0.4 } else { 0.2 }),
            null(0.3 + 0.002 * s),
            null(2.0),
            1e-3 * (1.0 - s / 40.0),
            3e-3 * (1.0 - s / 40.0),
            200.0 + (s * 7.0) % 30.0,
            60000.0 + s,
            t0 + s * 0.4 + if first_attempt { 0.0 } else { 20.0 },
        );
    };
    let eval = |lines: &mut String, step: u64, first_attempt: bool| {
        let offset = if first_attempt { 0.2 } else { 0.0 };
        let k = step as f64 / 5.0;
        let _ = writeln!(
            lines,
            "{{\"step\":{step},\"eval\":\"dev\",\"auc\":{},\"mrr\":{},\"ndcg5\":{},\"ndcg10\":{},\
             \"impressions\":50.0,\"time\":{}}}",
            0.55 + 0.012 * k + seed as f64 * 0.001 - offset,
            0.30 + 0.01 * k,
            0.36 + 0.01 * k,
            0.51 + 0.008 * k,
            t0 + step as f64 * 0.4 + 0.1 + if first_attempt { 0.0 } else { 20.0 },
        );
    };
    for step in (5..=25).step_by(5) {
        record(&mut lines, step, true);
        if step.is_multiple_of(10) {
            eval(&mut lines, step, true);
        }
    }
    for step in (20..=40).step_by(5) {
        record(&mut lines, step, false);
        if step.is_multiple_of(10) {
            eval(&mut lines, step, false);
        }
    }
    std::fs::write(dir.join("metrics.jsonl"), lines).unwrap();
    std::fs::write(dir.join("config.toml"), config(&dir, changes)).unwrap();
    std::fs::write(dir.join("best.json"), r#"{"step":40,"auc":0.6,"checkpoint":"step-00000040"}"#).unwrap();
    for step in ["step-00000030", "step-00000040"] {
        std::fs::create_dir_all(dir.join(step)).unwrap();
    }
    dir
}

/// The pixels of a PNG as RGB triples (and its size).
fn pixels(path: &Path) -> (Vec<[u8; 3]>, u32, u32) {
    mtrec_report::read_rgb(path).unwrap()
}

/// The figure decodes, is not blank, and each of the first `lines` palette colours covers more
/// pixels than a legend sample could (so the line itself is drawn).
fn assert_figure(path: &Path, lines: usize) {
    let (rgb, width, height) = pixels(path);
    assert!(width >= 800 && height >= 500, "{}: {width}x{height}", path.display());
    let distinct: HashSet<[u8; 3]> = rgb.iter().copied().collect();
    assert!(distinct.len() > 20, "{}: only {} colours", path.display(), distinct.len());
    let dark = rgb.iter().filter(|p| p.iter().all(|&c| c < 80)).count();
    assert!(dark > 500, "{}: {dark} dark pixels: no text or axes", path.display());
    for (i, (r, g, b)) in PALETTE.iter().take(lines).enumerate() {
        let n = rgb.iter().filter(|p| **p == [*r, *g, *b]).count();
        assert!(n > 400, "{}: series {i}'s colour ({r},{g},{b}) on {n} pixels only", path.display());
    }
    let (r, g, b) = PALETTE[lines];
    let n = rgb.iter().filter(|p| **p == [r, g, b]).count();
    assert!(
        n < 50,
        "{}: {n} pixels of an unused series colour: a series that should be absent",
        path.display()
    );
}

#[test]
fn report_writes_every_figure_with_its_lines_and_the_summary() {
    let root = tempfile::tempdir().unwrap();
    let run = run_dir(root.path(), "mtrec", true, &[("mtl.lambda", "0.5"), ("eval.every", "10")], 7);
    let out = root.path().join("report");
    let summary = write_report(&run, &out, DEFAULTS).unwrap();

    assert_eq!(summary.report, out.join("report.md"));
    assert_eq!(summary.figures, FIGURES.iter().map(|f| out.join(f)).collect::<Vec<_>>());
    assert_eq!(summary.steps, 40);
    let last = summary.final_metrics.as_ref().unwrap();
    assert_eq!((last.step, last.auc), (40, final_auc(7)));
    assert_eq!(summary.best.as_ref().unwrap().checkpoint, "step-00000040");
    assert_eq!(summary.best_metrics.as_ref(), Some(last));

    for (figure, lines) in FIGURES.iter().zip([3, 2, 4, 2, 1]) {
        assert_figure(&out.join(figure), lines);
    }

    let md = std::fs::read_to_string(&summary.report).unwrap();
    let final_line =
        format!("| {:.4} | {:.4} | {:.4} | {:.4} | 50 |", last.auc, last.mrr, last.ndcg5, last.ndcg10);
    assert!(md.contains(&final_line), "final metrics {final_line:?} missing:\n{md}");
    assert!(md.contains(&format!("AUC {:.4}, MRR {:.4}", last.auc, last.mrr)), "{md}");
    for line in [
        "mtl.lambda = 0.5  # default 0.3",
        "train.batch_size = 16  # default 32",
        "eval.every = 10  # default 0",
        "model.init = \"random\"  # default \"pretrained\"",
        "optim.lr_bert = 0.001  # default 0.00002",
    ] {
        assert!(md.contains(line), "config line {line:?} missing:\n{md}");
    }
    assert!(!md.contains("mtl.surgery"), "an unchanged field is listed:\n{md}");
    let digest = mtrec_report::sha256_hex(&std::fs::read(run.join("config.toml")).unwrap());
    assert!(md.contains(&digest), "{md}");
    assert!(md.contains("| steps trained | 40 of 40"), "{md}");
    // wall time: first record at 5 x 0.4 s, the last at 40 x 0.4 + 0.1 + 20 s (the resume)
    assert!(md.contains("| wall time | 34.1 s"), "{md}");
    assert!(md.contains("`step-00000040` (step 40): AUC"), "{md}");
    assert!(md.contains("`step-00000030`, `step-00000040`"), "{md}");
    for figure in FIGURES {
        assert!(md.contains(&format!("]({figure})")), "no link to {figure}:\n{md}");
    }
    assert!(md.contains("a resume"), "{md}");
}

#[test]
fn a_resumed_run_is_one_curve_with_the_later_records() {
    let root = tempfile::tempdir().unwrap();
    let run = run_dir(root.path(), "mtrec", true, &[], 7);
    let metrics = Metrics::read(&run.join("metrics.jsonl")).unwrap();
    let steps: Vec<u64> = metrics.train.iter().map(|r| r.step).collect();
    assert_eq!(steps, [5, 10, 15, 20, 25, 30, 35, 40]);
    assert!(metrics.eval.windows(2).all(|w| w[0].step < w[1].step));
    assert_eq!(metrics.eval.iter().map(|r| r.step).collect::<Vec<_>>(), [10, 20, 30, 40]);
    // the repeated steps hold the resumed run's values (offset 0), the others the first attempt's
    assert_eq!(metrics.train[3].loss_main, Some(1.6 - 0.02 * 20.0));
    assert_eq!(metrics.train[0].loss_main, Some(1.6 - 0.02 * 5.0 + 0.3));
    assert_eq!(metrics.duplicates, 3);
    // 8 windows of 5 steps x 16 samples
    let expected: f64 = metrics.train.iter().map(|r| 80.0 / r.samples_per_s.unwrap()).sum();
    assert!((metrics.training_time_s(16).unwrap() - expected).abs() < 1e-9);
}

#[test]
fn a_run_without_auxiliary_tasks_leaves_their_series_out() {
    let root = tempfile::tempdir().unwrap();
    let run = run_dir(root.path(), "baseline", false, &[("mtl.category", "false"), ("mtl.ner", "false")], 1);
    let out = root.path().join("out");
    let summary = write_report(&run, &out, DEFAULTS).unwrap();
    assert_figure(&out.join("losses.png"), 1);
    let (rgb, _, _) = pixels(&out.join("gradients.png"));
    assert!(rgb.iter().collect::<HashSet<_>>().len() > 20, "the empty figure has its title and axes");
    let md = std::fs::read_to_string(summary.report).unwrap();
    assert!(md.contains("(no data: no auxiliary tasks (mtl.category and mtl.ner off))"), "{md}");
    assert!(md.contains("mtl.ner = false  # default true"), "{md}");
}

#[test]
fn compare_lists_every_run_with_the_paper_row_of_its_config() {
    let root = tempfile::tempdir().unwrap();
    let mtrec = run_dir(root.path(), "mtrec", true, &[], 7);
    let pcgrad = run_dir(root.path(), "mtrec-pcgrad", true, &[("mtl.surgery", "\"pcgrad\"")], 2);
    let out = root.path().join("cmp");
    let table = compare(&[mtrec.clone(), pcgrad.clone()], &out).unwrap();
    assert_eq!(std::fs::read_to_string(out.join("compare.md")).unwrap(), table);

    let row = |dir: &Path| {
        let name = format!("| `{}` |", dir.display());
        table
            .lines()
            .find(|l| l.starts_with(&name))
            .unwrap_or_else(|| panic!("no row {name}:\n{table}"))
            .to_string()
    };
    let best = format!("{:.2}", final_auc(7) * 100.0);
    // best record at step 40, 40 steps, mean samples/s of the kept records, then the paper's
    let rate = Metrics::read(&mtrec.join("metrics.jsonl")).unwrap().mean_samples_per_s().unwrap();
    let expected = format!(
        "| {best} | 38.00 | 44.00 | 57.40 | 40 | 40 | {rate:.1} | MTRec | 69.43 | 33.79 | 37.64 | 43.74 |"
    );
    assert!(row(&mtrec).ends_with(&expected), "{}\nexpected to end with\n{expected}", row(&mtrec));
    assert!(row(&pcgrad).ends_with("| - | - | - | - | - |"), "pcgrad is no Table 1 row:\n{table}");
    assert!(table.contains("](dev_auc.png)"), "{table}");
    assert_figure(&out.join("dev_auc.png"), 2);

    let err = compare(&[root.path().join("missing")], &out).unwrap_err().to_string();
    assert!(err.contains("missing/metrics.jsonl") && err.matches("os error").count() == 1, "{err}");
}

//! Run reports, from the files the trainer leaves in a run directory (no torch, no Python, no
//! system fonts).
//!
//! [`write_report`] reads `metrics.jsonl` ([`Metrics`]: training and evaluation records, sorted
//! by step, one per step, so a resumed run is one continuous curve), `config.toml`, `best.json`
//! and the `step-NNNNNNNN/` checkpoint folders, and writes six PNG figures and `report.md`:
//!
//! - `losses.png`: `loss_main`, `loss_category`, `loss_ner` over steps (nats);
//! - `gradients.png`: `cos(g_main, g_aux)` and the running conflict rate (the paper's Appendix B);
//! - `dev.png`: AUC, MRR, nDCG@5, nDCG@10 of the evaluation records;
//! - `learning_rate.png`: `lr_bert` and `lr_task`;
//! - `throughput.png`: samples/s;
//! - `groups.png`: AUC, MRR and nDCG@10 of the last evaluation by user group (bars);
//! - `report.md`: the config's sha256 and the fields that differ from the defaults, steps, wall
//!   and training time, throughput, the best checkpoint and the final metrics, the figures.
//!
//! Every figure is written: a series whose values are all null (no auxiliary task) is left out,
//! and a figure with nothing to plot says `(no data: why)` in its title.
//!
//! [`compare`] tabulates several runs' best evaluation metrics as Markdown beside the paper's
//! Table 1 ([`TABLE1`], matched from each config by [`table1_row`]) and overlays their dev AUC
//! curves in `dev_auc.png`.

mod config;
mod metrics;
mod plot;

pub use config::{ConfigDiff, PaperRow, TABLE1, config_diff, sha256_hex, table1_row};
pub use metrics::{BeyondAccuracyRecord, EvalRecord, Metrics, TrainRecord};
pub use plot::{PALETTE, read_rgb};

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Everything that can go wrong while reading a run directory or writing a report. Every
/// variant names the file it concerns; the underlying error's text is part of the message once
/// (it is not also chained as a `source`).
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// Reading or writing a file failed.
    #[error("{}: {error}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What failed.
        error: std::io::Error,
    },
    /// A line of `metrics.jsonl` (or `best.json`) is malformed.
    #[error("{}:{line}: {reason}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// A TOML file (`config.toml`, or the defaults passed in) does not parse or lacks a field.
    #[error("{}: {reason}", path.display())]
    Config {
        /// The config file (`<defaults>` for the defaults passed in).
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A figure could not be drawn or encoded.
    #[error("{}: drawing the figure: {reason}", path.display())]
    Plot {
        /// The PNG file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// `compare` was given no run directory.
    #[error("compare: no run directory given")]
    NoRuns,
}

impl ReportError {
    fn io(path: &Path, error: std::io::Error) -> ReportError {
        ReportError::Io { path: path.to_path_buf(), error }
    }
}

/// `run_dir/best.json`: the checkpoint with the best evaluation by the run's `eval.metric`, as the
/// trainer recorded it.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct BestCheckpoint {
    /// The step of the checkpoint.
    pub step: u64,
    /// The metric it is best by (`auc`, `mrr`, `ndcg5`, `ndcg10`; older files: AUC).
    #[serde(default = "auc_name")]
    pub metric: String,
    /// Its value (fraction; `auc` in older files).
    #[serde(alias = "auc")]
    pub value: f64,
    /// The checkpoint folder, relative to the run directory (older files: an absolute path).
    pub checkpoint: String,
}

fn auc_name() -> String {
    "auc".into()
}

/// What [`write_report`] wrote, and the metrics to print.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportSummary {
    /// `out_dir/report.md`.
    pub report: PathBuf,
    /// The PNG figures, in the order of the module doc.
    pub figures: Vec<PathBuf>,
    /// The last step logged.
    pub steps: u64,
    /// The last evaluation record, if any.
    pub final_metrics: Option<EvalRecord>,
    /// `best.json`, if present and readable.
    pub best: Option<BestCheckpoint>,
    /// The evaluation record at the best checkpoint's step, if logged.
    pub best_metrics: Option<EvalRecord>,
}

/// A run directory's files, read once.
struct Run {
    dir: PathBuf,
    metrics: Metrics,
    config_bytes: Vec<u8>,
    config: toml::Table,
}

impl Run {
    fn read(dir: &Path) -> Result<Run, ReportError> {
        let metrics = Metrics::read(&dir.join("metrics.jsonl"))?;
        let config_path = dir.join("config.toml");
        let config_bytes =
            std::fs::read(&config_path).map_err(|error| ReportError::io(&config_path, error))?;
        let config = parse_toml(&String::from_utf8_lossy(&config_bytes), &config_path)?;
        Ok(Run { dir: dir.to_path_buf(), metrics, config_bytes, config })
    }

    fn get(&self, section: &str, key: &str) -> Option<&toml::Value> {
        self.config.get(section)?.get(key)
    }

    fn batch_size(&self) -> Option<u64> {
        self.get("train", "batch_size")?.as_integer().and_then(|b| u64::try_from(b).ok())
    }

    fn has_aux(&self) -> Option<bool> {
        Some(self.get("mtl", "category")?.as_bool()? || self.get("mtl", "ner")?.as_bool()?)
    }
}

fn parse_toml(text: &str, path: &Path) -> Result<toml::Table, ReportError> {
    toml::from_str(text).map_err(|e| ReportError::Config {
        path: path.to_path_buf(),
        reason: e.to_string().trim_end().replace('\n', " "),
    })
}

/// The figure files [`write_report`] writes, in order.
pub const FIGURES: [&str; 6] =
    ["losses.png", "gradients.png", "dev.png", "learning_rate.png", "throughput.png", "groups.png"];

/// Writes the figures and `report.md` of the run in `run_dir` into `out_dir` (created).
/// `defaults_toml` is the resolved default config as TOML; `report.md` lists the fields of the
/// run's `config.toml` that differ from it. Needs `metrics.jsonl` and `config.toml`; `best.json`
/// and checkpoints are optional.
pub fn write_report(
    run_dir: &Path,
    out_dir: &Path,
    defaults_toml: &str,
) -> Result<ReportSummary, ReportError> {
    let run = Run::read(run_dir)?;
    let defaults = parse_toml(defaults_toml, Path::new("<defaults>"))?;
    std::fs::create_dir_all(out_dir).map_err(|error| ReportError::io(out_dir, error))?;

    let figures = figures(&run);
    let mut paths = Vec::new();
    for (name, figure) in FIGURES.iter().zip(&figures) {
        let path = out_dir.join(name);
        figure.write(&path)?;
        paths.push(path);
    }

    let mut notes = Vec::new();
    let best = read_best(run_dir, &mut notes);
    let best_metrics =
        best.as_ref().and_then(|b| run.metrics.eval.iter().find(|r| r.step == b.step).cloned());
    let final_metrics = run.metrics.eval.last().cloned();
    let markdown = report_markdown(&run, &defaults, &figures, best.as_ref(), best_metrics.as_ref(), notes);
    let report = out_dir.join("report.md");
    std::fs::write(&report, markdown).map_err(|error| ReportError::io(&report, error))?;
    Ok(ReportSummary {
        report,
        figures: paths,
        steps: run.metrics.last_step(),
        final_metrics,
        best,
        best_metrics,
    })
}

/// The figures of a run, in [`FIGURES`] order.
fn figures(run: &Run) -> Vec<plot::Figure> {
    let train = &run.metrics.train;
    let eval = &run.metrics.eval;
    let steps = |f: fn(&TrainRecord) -> Option<f64>| train.iter().map(move |r| (r.step as f64, f(r)));
    let no_train = "no training records in metrics.jsonl";

    let mut losses = plot::Figure::new("Training losses", "step", "loss (nats)");
    losses.add("main (click prediction)", steps(|r| r.loss_main));
    losses.add("category", steps(|r| r.loss_category));
    losses.add("NER", steps(|r| r.loss_ner));
    losses.if_empty(no_train);

    let mut gradients =
        plot::Figure::new("Gradients: cos(g_main, g_aux) and conflict rate", "step", "cosine / rate");
    gradients.zero_line = true;
    gradients.add("cos(g_main, g_aux)", steps(|r| r.cos_main_aux));
    gradients.add("conflict rate (running)", steps(|r| r.conflict_rate));
    gradients.if_empty(if train.is_empty() {
        no_train
    } else if run.has_aux() == Some(false) {
        "no auxiliary tasks (mtl.category and mtl.ner off)"
    } else {
        "no gradient statistics in metrics.jsonl"
    });

    let split = eval.last().map_or("dev", |r| r.split.as_str());
    let mut dev = plot::Figure::new(&format!("Evaluation on {split}"), "step", "metric (fraction)");
    let at = |f: fn(&EvalRecord) -> f64| eval.iter().map(move |r| (r.step as f64, Some(f(r))));
    dev.add("AUC", at(|r| r.auc));
    dev.add("MRR", at(|r| r.mrr));
    dev.add("nDCG@5", at(|r| r.ndcg5));
    dev.add("nDCG@10", at(|r| r.ndcg10));
    dev.markers = true;
    dev.if_empty("no evaluation records in metrics.jsonl");

    let mut lr = plot::Figure::new("Learning rates", "step", "learning rate");
    lr.add("lr_bert (BERT)", steps(|r| r.lr_bert));
    lr.add("lr_task (task heads)", steps(|r| r.lr_task));
    lr.scientific = true;
    lr.if_empty(no_train);

    let mut throughput = plot::Figure::new("Training throughput (global batch)", "step", "samples/s");
    throughput.add("samples/s", steps(|r| r.samples_per_s));
    throughput.if_empty(no_train);

    let last = eval.last();
    let groups: Vec<String> = last
        .and_then(|r| r.groups.as_ref())
        .map(|g| ordered_groups(g).into_iter().cloned().collect())
        .unwrap_or_default();
    let step = last.map_or(String::new(), |r| format!(" (step {})", r.step));
    let mut by_group =
        plot::Figure::bars(&format!("By user group on {split}{step}"), groups.clone(), "metric (fraction)");
    for (name, key) in [("AUC", "auc"), ("MRR", "mrr"), ("nDCG@10", "ndcg10")] {
        let values = last.and_then(|r| r.groups.as_ref());
        by_group.add(
            name,
            groups.iter().enumerate().map(|(i, g)| (i as f64, values.and_then(|v| v[g][key].as_f64()))),
        );
    }
    by_group.if_empty("no evaluation by user group in metrics.jsonl");

    vec![losses, gradients, dev, lr, throughput, by_group]
}

/// The user groups of an evaluation record in the trainer's order (a JSON object read back is
/// sorted by name), then any other.
fn ordered_groups(groups: &serde_json::Map<String, serde_json::Value>) -> Vec<&String> {
    const ORDER: [&str; 6] =
        ["history 0", "history 1-5", "history 6-20", "history 21-50", "history over 50", "not in train"];
    let mut names: Vec<&String> = groups.keys().collect();
    names.sort_by_key(|n| ORDER.iter().position(|o| o == n).unwrap_or(ORDER.len()));
    names
}

/// `best.json`, or `None` with a note saying why it is missing or unusable.
fn read_best(run_dir: &Path, notes: &mut Vec<String>) -> Option<BestCheckpoint> {
    let path = run_dir.join("best.json");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            notes.push(format!("`best.json` unreadable: {e}"));
            return None;
        }
    };
    match serde_json::from_str::<BestCheckpoint>(&text) {
        Ok(best) => {
            if !run_dir.join(&best.checkpoint).is_dir() {
                notes.push(format!(
                    "`best.json` names `{}`, which is not in the run directory",
                    best.checkpoint
                ));
            }
            Some(best)
        }
        Err(e) => {
            notes.push(format!("`best.json` ignored: {e}"));
            None
        }
    }
}

/// `12.3 s`, `4 min 05 s`, `2 h 03 min`.
fn duration(seconds: f64) -> String {
    if seconds < 60.0 {
        format!("{seconds:.1} s")
    } else if seconds < 3600.0 {
        let s = seconds.round() as u64;
        format!("{} min {:02} s", s / 60, s % 60)
    } else {
        let m = (seconds / 60.0).round() as u64;
        format!("{} h {:02} min", m / 60, m % 60)
    }
}

/// `AUC 0.6943, MRR 0.3379, nDCG@5 0.3764, nDCG@10 0.4374 (73152 impressions)`
fn metrics_line(r: &EvalRecord) -> String {
    let impressions = r.impressions.map(|n| format!(" ({n} impressions)")).unwrap_or_default();
    format!("AUC {:.4}, MRR {:.4}, nDCG@5 {:.4}, nDCG@10 {:.4}{impressions}", r.auc, r.mrr, r.ndcg5, r.ndcg10)
}

/// The checkpoint folders (`step-NNNNNNNN`) in the run directory, sorted.
fn checkpoints(run_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(run_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| {
            n.strip_prefix("step-").is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
        })
        .collect();
    names.sort();
    names
}

fn report_markdown(
    run: &Run,
    defaults: &toml::Table,
    figures: &[plot::Figure],
    best: Option<&BestCheckpoint>,
    best_metrics: Option<&EvalRecord>,
    mut notes: Vec<String>,
) -> String {
    let m = &run.metrics;
    let mut out = String::new();
    let _ = writeln!(out, "# Run report: `{}`\n", run.dir.display());
    let _ = writeln!(out, "| | |\n|---|---|");
    let _ = writeln!(out, "| config | `config.toml`, sha256 `{}` |", sha256_hex(&run.config_bytes));
    let max_steps = run.get("train", "max_steps").and_then(|v| v.as_integer());
    let of = max_steps.map(|n| format!(" of {n} (`train.max_steps`)")).unwrap_or_default();
    let epoch =
        m.train.last().and_then(|r| r.epoch).map(|e| format!(", epoch {e} (0-based)")).unwrap_or_default();
    let _ = writeln!(out, "| steps trained | {}{of}{epoch} |", m.last_step());
    let wall = m.wall_time_s().map_or("- (no `time` in metrics.jsonl)".into(), |s| {
        format!("{} (first to last record of metrics.jsonl)", duration(s))
    });
    let _ = writeln!(out, "| wall time | {wall} |");
    let training = run
        .batch_size()
        .and_then(|b| m.training_time_s(b))
        .map_or("-".into(), |s| format!("{} (logged steps x `train.batch_size` / samples/s)", duration(s)));
    let _ = writeln!(out, "| training time | {training} |");
    let throughput = match (m.mean_samples_per_s(), m.mean_tokens_per_s()) {
        (Some(s), Some(t)) => {
            format!("{s:.1} samples/s, {t:.0} tokens/s (mean of {} log records)", m.train.len())
        }
        (Some(s), None) => format!("{s:.1} samples/s (mean of {} log records)", m.train.len()),
        _ => "-".into(),
    };
    let _ = writeln!(out, "| throughput | {throughput} |");
    let best_line = match (best, best_metrics) {
        (Some(b), Some(r)) => format!("`{}` (step {}): {}", b.checkpoint, b.step, metrics_line(r)),
        (Some(b), None) => format!("`{}` (step {}): {} {:.4}", b.checkpoint, b.step, b.metric, b.value),
        (None, _) => "- (no `best.json`)".into(),
    };
    let _ = writeln!(out, "| best checkpoint | {best_line} |");
    // An early stop the run went on from (`--reschedule`) is no longer how it ended.
    if let Some(e) = m.early_stop.as_ref().filter(|e| e.step >= m.last_step()) {
        let f = &e.early_stop;
        let _ = writeln!(
            out,
            "| stopped early | at step {}: {} evaluations without an improvement of {} by more than {} \
             (eval.patience = {}); best {:.4} at step {} |",
            e.step, f.evaluations_without_improvement, f.metric, f.min_delta, f.patience, f.best, f.best_step
        );
    }
    let final_line = m.eval.last().map_or("- (no evaluation records)".into(), |r| {
        format!("step {}, {}: {}", r.step, r.split, metrics_line(r))
    });
    let _ = writeln!(out, "| final metrics | {final_line} |");
    let saved = checkpoints(&run.dir);
    let saved = if saved.is_empty() {
        "-".into()
    } else {
        saved.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", ")
    };
    let _ = writeln!(out, "| checkpoints | {saved} |");

    if let Some(r) = m.eval.last() {
        let _ = writeln!(out, "\n## Final metrics ({}, step {})\n", r.split, r.step);
        let _ = writeln!(out, "| AUC | MRR | nDCG@5 | nDCG@10 | impressions |\n|---:|---:|---:|---:|---:|");
        let impressions = r.impressions.map_or("-".into(), |n| n.to_string());
        let _ = writeln!(
            out,
            "| {:.4} | {:.4} | {:.4} | {:.4} | {impressions} |",
            r.auc, r.mrr, r.ndcg5, r.ndcg10
        );
        if let Some(groups) = r.groups.as_ref().filter(|g| !g.is_empty()) {
            let _ = writeln!(
                out,
                "\nBy user group (history: the clicks the shards keep; not in train: cold users):\n"
            );
            let _ = writeln!(
                out,
                "| group | AUC | MRR | nDCG@5 | nDCG@10 | impressions |\n|---|---:|---:|---:|---:|---:|"
            );
            for (name, g) in ordered_groups(groups).into_iter().map(|n| (n, &groups[n])) {
                let value = |key: &str| g[key].as_f64().map_or("-".into(), |v| format!("{v:.4}"));
                let n = g["impressions"].as_f64().map_or("-".into(), |v| format!("{v}"));
                let (auc, mrr, n5, n10) = (value("auc"), value("mrr"), value("ndcg5"), value("ndcg10"));
                let _ = writeln!(out, "| {name} | {auc} | {mrr} | {n5} | {n10} | {n} |");
            }
        }
        if let Some(lists) = r.beyond_accuracy.as_ref().filter(|b| !b.is_empty()) {
            let _ = writeln!(
                out,
                "\nBeyond accuracy, each impression's top k (intra-list diversity by category and by \
                 news-vector cosine distance, catalogue coverage, novelty in bits, the share of the list \
                 in categories of the user's history):\n"
            );
            let _ = writeln!(
                out,
                "| k | ILD category | ILD cosine | coverage | novelty | history overlap |\n|---:|---:|---:|---:|---:|---:|"
            );
            let cell = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.4}"));
            for b in lists {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} | {} |",
                    b.k,
                    cell(b.ild_category),
                    cell(b.ild_cosine),
                    cell(b.coverage),
                    cell(b.novelty),
                    cell(b.history_overlap)
                );
            }
        }
    }

    let diffs = config_diff(&run.config, defaults);
    let _ = writeln!(out, "\n## Config: fields that differ from the defaults\n");
    if diffs.is_empty() {
        let _ = writeln!(out, "None: the run used the default config.");
    } else {
        let _ = writeln!(out, "```toml");
        for diff in &diffs {
            let _ = writeln!(out, "{diff}");
        }
        let _ = writeln!(out, "```");
    }

    let _ = writeln!(out, "\n## Figures\n");
    for (name, figure) in FIGURES.iter().zip(figures) {
        let why = figure.empty.as_ref().map(|w| format!(" (no data: {w})")).unwrap_or_default();
        let _ = writeln!(out, "- [{}]({name}){why}", figure.title);
    }
    for (name, figure) in FIGURES.iter().zip(figures) {
        let _ = writeln!(out, "\n![{}]({name})", figure.title);
    }

    if m.duplicates > 0 {
        notes.push(format!(
            "{} record(s) of metrics.jsonl logged a step again (a resume); the last of each was kept",
            m.duplicates
        ));
    }
    if m.torn_last_line {
        notes.push("the last line of metrics.jsonl was cut off (a killed writer) and was skipped".into());
    }
    if !notes.is_empty() {
        let _ = writeln!(out, "\n## Notes\n");
        for note in notes {
            let _ = writeln!(out, "- {note}");
        }
    }
    out
}

/// Percent with 2 decimals, as in the paper.
fn percent(fraction: f64) -> String {
    format!("{:.2}", fraction * 100.0)
}

/// Writes `out_dir/compare.md` (returned too): one row per run with its best evaluation record
/// (the highest AUC) in percent, its steps and mean samples/s, and the paper's Table 1 numbers
/// where the run's config is a Table 1 row; and `out_dir/dev_auc.png`, every run's dev AUC over
/// steps. Each run directory needs `metrics.jsonl` and `config.toml`.
pub fn compare(run_dirs: &[PathBuf], out_dir: &Path) -> Result<String, ReportError> {
    if run_dirs.is_empty() {
        return Err(ReportError::NoRuns);
    }
    let runs = run_dirs.iter().map(|dir| Run::read(dir)).collect::<Result<Vec<_>, _>>()?;
    std::fs::create_dir_all(out_dir).map_err(|error| ReportError::io(out_dir, error))?;

    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Runs compared\n\nBest evaluation record of each run (highest AUC), in %; `paper`: Bi et al. 2022, \
         Table 1 (MIND-small), for the runs whose config is one of its rows.\n"
    );
    let _ = writeln!(
        out,
        "| run | AUC | MRR | nDCG@5 | nDCG@10 | best step | steps | samples/s | Table 1 row | paper AUC | paper MRR | paper nDCG@5 | paper nDCG@10 |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|");
    for run in &runs {
        let m = &run.metrics;
        let ours = match m.best_eval() {
            Some(r) => format!(
                "{} | {} | {} | {} | {}",
                percent(r.auc),
                percent(r.mrr),
                percent(r.ndcg5),
                percent(r.ndcg10),
                r.step
            ),
            None => "- | - | - | - | -".into(),
        };
        let rate = m.mean_samples_per_s().map_or("-".into(), |s| format!("{s:.1}"));
        let paper = match table1_row(&run.config) {
            Some(p) => {
                format!("{} | {:.2} | {:.2} | {:.2} | {:.2}", p.method, p.auc, p.mrr, p.ndcg5, p.ndcg10)
            }
            None => "- | - | - | - | -".into(),
        };
        let _ = writeln!(out, "| `{}` | {ours} | {} | {rate} | {paper} |", run.dir.display(), m.last_step());
    }
    let _ = writeln!(out, "\n![dev AUC of every run](dev_auc.png)");

    let names = run_names(run_dirs);
    let mut figure = plot::Figure::new("Dev AUC of the runs", "step", "AUC (fraction)");
    for (run, name) in runs.iter().zip(&names) {
        figure.add(name, run.metrics.eval.iter().map(|r| (r.step as f64, Some(r.auc))));
    }
    figure.markers = true;
    figure.if_empty("no evaluation records in any run");
    figure.write(&out_dir.join("dev_auc.png"))?;

    let path = out_dir.join("compare.md");
    std::fs::write(&path, &out).map_err(|error| ReportError::io(&path, error))?;
    Ok(out)
}

/// Legend names: each run directory's last component, or its whole path where two share one.
fn run_names(run_dirs: &[PathBuf]) -> Vec<String> {
    let short =
        |d: &PathBuf| d.file_name().map_or_else(|| d.display().to_string(), |n| n.to_string_lossy().into());
    run_dirs
        .iter()
        .map(|d| {
            let name = short(d);
            if run_dirs.iter().filter(|o| short(o) == name).count() > 1 {
                d.display().to_string()
            } else {
                name
            }
        })
        .collect()
}

//! `metrics.jsonl` and the progress shown while training (rank 0): a record per log step
//! (losses, gradient statistics, learning rates, throughput, reduced over the ranks), one per
//! evaluation, one for an early stop; the progress bar or, without a terminal, one line per log
//! step. A resumed run keeps the records up to its checkpoint, so the file holds each step once.
//! With `log.tensorboard`, every record also goes to TensorBoard's event files
//! ([`crate::tensorboard`]).
use crate::TrainError;
use crate::checkpoint;
use crate::config::{Config, EvalConfig};
use crate::early_stop::EarlyStopping;
use crate::eval::Evaluation;
use crate::metrics::RankingMetrics;
use crate::progress::progress;
use crate::step::StepStats;
use crate::tensorboard::EventWriter;
use mtrec_dist::Collective;
use serde_json::json;
use std::io::Write;
use std::time::Instant;
use tch::Tensor;

pub(crate) fn eval_record(step: u64, split: &str, m: &RankingMetrics) -> serde_json::Value {
    json!({"step": step, "eval": split, "auc": m.auc, "mrr": m.mrr, "ndcg5": m.ndcg5,
        "ndcg10": m.ndcg10, "impressions": m.impressions})
}

/// `metrics.jsonl` (rank 0), the progress bar, and the running totals between log steps.
pub(crate) struct MetricsLogger {
    file: Option<std::fs::File>,
    tensorboard: Option<EventWriter>,
    every: u64,
    lr: (f64, f64),
    pub(crate) bar: indicatif::ProgressBar,
    pending: Vec<StepStats>,
    samples: u64,
    batch_size: u64,
    tokens: u64,
    /// When the window's first step began (evaluation and checkpoints excluded).
    started: Instant,
    conflicts: f64,
    surgery_steps: f64,
    main_rank: bool,
    split: String,
    max_steps: u64,
}

/// Seconds since the Unix epoch (a record's wall-clock time, for the run report).
fn unix_time() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// A log step in one short line, for a log that is not a terminal (the JSON record goes to
/// metrics.jsonl): `step 30/200 | loss 0.6931 cat 2.3103 ner 0.4512 | lr 2.0e-5 | 12.3 samples/s | eta 1m20s`.
fn progress_line(record: &serde_json::Value, max_steps: u64, eta_seconds: f64) -> String {
    let mut losses = format!("loss {:.4}", record["loss_main"].as_f64().unwrap_or(f64::NAN));
    for (key, name) in [("loss_category", "cat"), ("loss_ner", "ner")] {
        if let Some(value) = record[key].as_f64() {
            losses.push_str(&format!(" {name} {value:.4}"));
        }
    }
    let eta = eta_seconds.round() as u64;
    let eta = match eta {
        0..60 => format!("{eta}s"),
        60..3600 => format!("{}m{:02}s", eta / 60, eta % 60),
        _ => format!("{}h{:02}m", eta / 3600, eta % 3600 / 60),
    };
    format!(
        "step {}/{max_steps} | {losses} | lr {:.1e} | {:.1} samples/s | eta {eta}",
        record["step"],
        record["lr_bert"].as_f64().unwrap_or(f64::NAN),
        record["samples_per_s"].as_f64().unwrap_or(f64::NAN)
    )
}

fn mean(values: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    (n > 0).then(|| sum / n as f64)
}

impl MetricsLogger {
    /// Opens `metrics.jsonl` for appending, keeping only the records up to `start_step`: a
    /// resumed run logs the steps after it once, and its running conflict rate goes on from the
    /// kept records (each window's `conflict` weighs by its steps).
    pub(crate) fn open(
        config: &Config,
        main_rank: bool,
        start_step: u64,
    ) -> Result<MetricsLogger, TrainError> {
        let path = config.train.run_dir.join("metrics.jsonl");
        let (mut conflicts, mut surgery_steps) = (0.0, 0.0);
        let file = if main_rank {
            if let Ok(text) = std::fs::read_to_string(&path) {
                let mut kept = String::new();
                let mut previous_step = 0;
                for line in text.lines() {
                    let Ok(record) = serde_json::from_str::<serde_json::Value>(line) else { continue };
                    let Some(step) = record["step"].as_u64().filter(|&step| step <= start_step) else {
                        continue;
                    };
                    if let Some(conflict) = record["conflict"].as_f64() {
                        let gap = step.saturating_sub(previous_step) as f64;
                        let window = record["window_steps"].as_f64().unwrap_or(gap);
                        conflicts += conflict * window;
                        surgery_steps += window;
                    }
                    if record["loss_main"].is_number() {
                        previous_step = step;
                    }
                    kept.push_str(line);
                    kept.push('\n');
                }
                checkpoint::write_durably(&path, kept.as_bytes())?;
            }
            let file = std::fs::OpenOptions::new().create(true).append(true).open(&path);
            Some(file.map_err(|e| TrainError::io(&path, e))?)
        } else {
            None
        };
        let tensorboard = match main_rank && config.log.tensorboard {
            true => Some(EventWriter::create(
                &config.train.run_dir.join("tensorboard"),
                start_step + 1,
                &config.to_toml(),
            )?),
            false => None,
        };
        let bar = progress(config.train.max_steps, "train", main_rank);
        bar.set_position(start_step);
        bar.reset_eta(); // the steps before a resume took no time in this process
        Ok(MetricsLogger {
            file,
            tensorboard,
            every: config.log.every.max(1),
            lr: (config.optim.lr_bert, config.optim.lr_task),
            bar,
            pending: Vec::new(),
            samples: 0,
            batch_size: config.train.batch_size as u64,
            tokens: 0,
            started: Instant::now(),
            conflicts,
            surgery_steps,
            main_rank,
            split: config.eval.split.clone(),
            max_steps: config.train.max_steps,
        })
    }

    pub(crate) fn record(&mut self, stats: StepStats, global_tokens: u64) {
        self.pending.push(stats);
        self.samples += self.batch_size;
        self.tokens += global_tokens;
        self.bar.inc(1);
    }

    pub(crate) fn due(&self, step: u64, last: bool) -> bool {
        last || step.is_multiple_of(self.every)
    }

    pub(crate) fn append(&mut self, record: &serde_json::Value) -> Result<(), TrainError> {
        if let Some(file) = &mut self.file {
            writeln!(file, "{record}").map_err(|e| TrainError::Checkpoint(format!("metrics.jsonl: {e}")))?;
        }
        if let Some(events) = &mut self.tensorboard {
            events.record(record)?;
        }
        Ok(())
    }

    /// The window's record: losses of the global batch (one all-reduce), gradient statistics,
    /// learning rates and throughput; the device's values read in one copy ([`window_values`]).
    pub(crate) fn write(
        &mut self,
        step: u64,
        steps_per_epoch: u64,
        lr_scale: f64,
        collective: &dyn Collective,
    ) -> Result<(), TrainError> {
        let pending = std::mem::take(&mut self.pending);
        let WindowValues { losses, steps } = window_values(&pending, collective)?;
        losses.check_finite(step, pending.len())?;
        let conflicts: Vec<f64> = steps.iter().filter_map(|v| v.conflict).collect();
        self.conflicts += conflicts.iter().sum::<f64>();
        self.surgery_steps += conflicts.len() as f64;
        // Read after the losses: the device has finished the window's steps.
        let elapsed = self.started.elapsed().as_secs_f64().max(1e-9);
        let record = json!({
            "step": step,
            "epoch": (step - 1) / steps_per_epoch,
            "loss_main": losses.main,
            "loss_category": losses.category,
            "loss_ner": losses.ner,
            "cos_main_aux": mean(steps.iter().filter_map(|v| v.cosine)),
            "conflict": mean(conflicts.iter().copied()),
            "conflict_rate": (self.surgery_steps > 0.0).then(|| self.conflicts / self.surgery_steps),
            "grad_norm_main": mean(steps.iter().map(|v| v.grad_norm_main)),
            "grad_norm_aux": mean(steps.iter().filter_map(|v| v.grad_norm_aux)),
            "grad_norm": mean(steps.iter().map(|v| v.grad_norm)),
            "lr_bert": self.lr.0 * lr_scale,
            "lr_task": self.lr.1 * lr_scale,
            "samples_per_s": self.samples as f64 / elapsed,
            "tokens_per_s": self.tokens as f64 / elapsed,
            "window_steps": pending.len(),
            "time": unix_time(),
        });
        self.samples = 0;
        self.tokens = 0;
        if self.main_rank {
            let seconds_per_step = elapsed / pending.len().max(1) as f64;
            let eta = self.max_steps.saturating_sub(step) as f64 * seconds_per_step;
            let line = progress_line(&record, self.max_steps, eta);
            if self.bar.is_hidden() {
                tracing::info!("{line}");
            } else {
                // The bar shows the step, the rate and the ETA itself.
                self.bar.set_message(line.split(" | ").skip(1).take(2).collect::<Vec<_>>().join(" | "));
            }
        }
        self.append(&record)
    }

    pub(crate) fn write_eval(
        &mut self,
        step: u64,
        evaluation: &Evaluation,
        took: std::time::Duration,
    ) -> Result<(), TrainError> {
        if self.main_rank {
            let line = format!("step {step}: {}: {evaluation}({:.1} s)", self.split, took.as_secs_f64());
            if self.bar.is_hidden() {
                tracing::info!("{line}");
            } else {
                self.bar.println(line);
            }
        }
        let mut record = eval_record(step, &self.split, &evaluation.metrics);
        record["time"] = json!(unix_time());
        record["seconds"] = json!(took.as_secs_f64());
        for (key, value) in evaluation.to_json().as_object().expect("an object") {
            record.as_object_mut().expect("an object").entry(key.clone()).or_insert_with(|| value.clone());
        }
        self.append(&record)
    }

    /// The record (and log line) of an early stop.
    pub(crate) fn write_early_stop(
        &mut self,
        step: u64,
        count: &EarlyStopping,
        eval: &EvalConfig,
    ) -> Result<(), TrainError> {
        if self.main_rank {
            let line = count.describe(step, eval);
            if self.bar.is_hidden() {
                tracing::info!("{line}");
            } else {
                self.bar.println(line);
            }
        }
        let record = json!({"step": step, "early_stop": {"metric": count.metric, "best": count.best,
            "best_step": count.best_step, "evaluations_without_improvement": count.since,
            "patience": eval.patience, "min_delta": eval.min_delta}, "time": unix_time()});
        self.append(&record)
    }

    /// The next window's time starts now, after a log step's evaluation and checkpoint.
    pub(crate) fn window_starts(&mut self) {
        if self.pending.is_empty() {
            self.started = Instant::now();
        }
    }
}

/// Mean losses of a log window over its steps, of the whole global batch.
struct WindowLosses {
    main: Option<f64>,
    category: Option<f64>,
    ner: Option<f64>,
}

/// Each rank's loss is its share of the global batch's (the main loss a mean over equal slices,
/// the auxiliary ones divided by the global counts over the world size), so their average over
/// ranks is the global batch's loss; one all-reduce per log step.
impl WindowLosses {
    /// Refuses a NaN or infinite loss, naming the loss and the window of steps it is the mean of
    /// (the same on every rank: the losses are the global batch's).
    fn check_finite(&self, step: u64, window: usize) -> Result<(), TrainError> {
        for (name, value) in [("main", self.main), ("category", self.category), ("NER", self.ner)] {
            if let Some(value) = value.filter(|v| !v.is_finite()) {
                let first = step + 1 - window.max(1) as u64;
                return Err(TrainError::Diverged(format!(
                    "the {name} loss of the global batch is {value} in steps {first}..={step}; lower the \
                     learning rate (optim.lr_bert, optim.lr_task) or check the data, and resume from a \
                     checkpoint before step {first}"
                )));
            }
        }
        Ok(())
    }
}

/// A log window's device values, read on the host with one copy.
struct WindowValues {
    losses: WindowLosses,
    steps: Vec<StepValues>,
}

/// A step's gradient statistics on the host ([`StepStats`]).
struct StepValues {
    conflict: Option<f64>,
    cosine: Option<f64>,
    grad_norm_main: f64,
    grad_norm_aux: Option<f64>,
    grad_norm: f64,
}

/// Values of [`StepValues`] per step on the device.
const STEP_VALUES: usize = 5;

impl StepValues {
    /// `s`'s statistics as `[STEP_VALUES]` f64 on the device, NaN where it has none (no
    /// surgery, no auxiliary task).
    fn on_device(s: &StepStats) -> Tensor {
        let double = |t: &Tensor| t.to_kind(tch::Kind::Double).reshape([1]);
        let none = || double(&s.grad_norm).full_like(f64::NAN);
        let surgery = s.surgery.as_ref();
        let values = [
            surgery.map_or_else(none, |g| double(&g.conflict)),
            surgery.map_or_else(none, |g| double(&g.cosine)),
            double(&s.grad_norm_main),
            s.grad_norm_aux.as_ref().map_or_else(none, double),
            double(&s.grad_norm),
        ];
        Tensor::cat(&values, 0)
    }

    /// The host copy `v` of [`StepValues::on_device`] of `s`.
    fn read(s: &StepStats, v: &[f64]) -> StepValues {
        StepValues {
            conflict: s.surgery.as_ref().map(|_| v[0]),
            cosine: s.surgery.as_ref().map(|_| v[1]),
            grad_norm_main: v[2],
            grad_norm_aux: s.grad_norm_aux.as_ref().map(|_| v[3]),
            grad_norm: v[4],
        }
    }
}

/// The window's mean losses of the global batch (one all-reduce) and every step's
/// [`StepValues`], in one device-to-host copy.
fn window_values(pending: &[StepStats], collective: &dyn Collective) -> Result<WindowValues, TrainError> {
    let Some(first) = pending.first() else {
        return Ok(WindowValues {
            losses: WindowLosses { main: None, category: None, ner: None },
            steps: Vec::new(),
        });
    };
    let rows: Vec<Tensor> = pending
        .iter()
        .map(|s| {
            let zero = || s.loss_main.zeros_like();
            let parts = [
                s.loss_main.shallow_clone(),
                s.loss_category.as_ref().map_or_else(zero, Tensor::shallow_clone),
                s.loss_ner.as_ref().map_or_else(zero, Tensor::shallow_clone),
            ];
            Tensor::stack(&parts, 0)
        })
        .collect();
    let mut means = Tensor::stack(&rows, 0).to_kind(tch::Kind::Float).mean_dim(0, false, tch::Kind::Float);
    collective.all_reduce_mean(&mut means)?;
    let mut parts = vec![means.to_kind(tch::Kind::Double)];
    parts.extend(pending.iter().map(StepValues::on_device));
    let values = Vec::<f64>::try_from(Tensor::cat(&parts, 0).to_device(tch::Device::Cpu))?;
    let steps = pending
        .iter()
        .zip(values[3..].chunks_exact(STEP_VALUES))
        .map(|(s, v)| StepValues::read(s, v))
        .collect();
    Ok(WindowValues {
        losses: WindowLosses {
            main: Some(values[0]),
            category: first.loss_category.is_some().then_some(values[1]),
            ner: first.loss_ner.is_some().then_some(values[2]),
        },
        steps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_non_finite_loss_ends_the_run_naming_the_loss_and_steps() {
        let finite = WindowLosses { main: Some(0.7), category: Some(2.3), ner: None };
        assert!(finite.check_finite(10, 10).is_ok());
        let nan = WindowLosses { main: Some(0.7), category: Some(f64::NAN), ner: None };
        let message = nan.check_finite(20, 10).unwrap_err().to_string();
        assert!(
            message.starts_with(
                "training diverged: the category loss of the global batch is NaN in steps 11..=20"
            ),
            "{message}"
        );
        let inf = WindowLosses { main: Some(f64::INFINITY), category: None, ner: None };
        assert!(
            inf.check_finite(3, 1)
                .unwrap_err()
                .to_string()
                .contains("main loss of the global batch is inf in steps 3..=3")
        );
    }

    #[test]
    fn a_resumed_run_keeps_the_metrics_up_to_its_checkpoint_and_logs_each_step_once() {
        let run = tempfile::tempdir().unwrap();
        let path = run.path().join("metrics.jsonl");
        let lines: String =
            (1..=5).map(|s| format!("{{\"step\":{s},\"loss_main\":1.0,\"conflict\":{}}}\n", s % 2)).collect();
        std::fs::write(&path, lines + "{\"step\":3,\"auc\":0.6}\n").unwrap();
        let config = Config::parse("", &[format!("train.run_dir={}", run.path().display())]).unwrap();
        let mut log = MetricsLogger::open(&config, true, 3).unwrap();
        // Steps 1 and 3 of the three kept conflicted: the running rate goes on from 2 of 3.
        assert_eq!((log.conflicts, log.surgery_steps), (2.0, 3.0));
        log.append(&json!({"step": 4, "loss_main": 0.5})).unwrap();
        let steps: Vec<(u64, bool)> = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .map(|r| (r["step"].as_u64().unwrap(), r["auc"].is_number()))
            .collect();
        assert_eq!(steps, [(1, false), (2, false), (3, false), (3, true), (4, false)]);

        // The one-line form of a log step.
        let record = json!({"step": 30, "loss_main": 0.71234, "loss_category": 2.3, "loss_ner": null,
            "lr_bert": 2e-5, "samples_per_s": 12.34});
        assert_eq!(
            progress_line(&record, 200, 80.4),
            "step 30/200 | loss 0.7123 cat 2.3000 | lr 2.0e-5 | 12.3 samples/s | eta 1m20s"
        );

        // Rank 0 alone writes it.
        drop(MetricsLogger::open(&config, false, 0).unwrap());
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 5);
    }
}

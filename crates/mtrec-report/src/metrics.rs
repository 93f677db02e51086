//! Reading `metrics.jsonl`: training and evaluation records, sorted by step, one per step.

use crate::ReportError;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// One training record of `metrics.jsonl` (written every `log.every` steps). Every number is
/// optional: `null` (no auxiliary task, a NaN loss) and an absent field both read as `None`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
pub struct TrainRecord {
    /// The optimizer step the window ends at.
    pub step: u64,
    /// 0-based epoch of `step`.
    pub epoch: Option<u64>,
    /// Click-prediction loss (nats).
    pub loss_main: Option<f64>,
    /// Category-classification loss (nats), `None` with `mtl.category = false`.
    pub loss_category: Option<f64>,
    /// NER-tagging loss (nats), `None` with `mtl.ner = false`.
    pub loss_ner: Option<f64>,
    /// Mean cosine between the main and the auxiliary gradient over the window.
    pub cos_main_aux: Option<f64>,
    /// Fraction of the window's steps whose gradients conflicted (negative cosine).
    pub conflict: Option<f64>,
    /// Running fraction of conflicting steps since the run started (a resumed run goes on from the
    /// records it kept).
    pub conflict_rate: Option<f64>,
    /// Norm of the main-task gradient.
    pub grad_norm_main: Option<f64>,
    /// Norm of the auxiliary gradient.
    pub grad_norm_aux: Option<f64>,
    /// Norm of the combined gradient.
    pub grad_norm: Option<f64>,
    /// Learning rate of the BERT parameters.
    pub lr_bert: Option<f64>,
    /// Learning rate of the task heads.
    pub lr_task: Option<f64>,
    /// Global samples per second over the window.
    pub samples_per_s: Option<f64>,
    /// Global tokens per second over the window.
    pub tokens_per_s: Option<f64>,
    /// Unix time (seconds) the record was written; absent in older files.
    pub time: Option<f64>,
}

/// One evaluation record of `metrics.jsonl`: ranking metrics as fractions (0.6943, not 69.43).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct EvalRecord {
    /// The step evaluated.
    pub step: u64,
    /// The split evaluated (`dev`).
    #[serde(rename = "eval")]
    pub split: String,
    /// Area under the ROC curve, averaged over impressions.
    pub auc: f64,
    /// Mean reciprocal rank.
    pub mrr: f64,
    /// nDCG@5.
    pub ndcg5: f64,
    /// nDCG@10.
    pub ndcg10: f64,
    /// Impressions evaluated.
    pub impressions: Option<f64>,
    /// Unix time (seconds) the record was written; absent in older files.
    pub time: Option<f64>,
    /// The same metrics by user group (`history 0`, `history 1-5`, ..., `not in train`), in the
    /// trainer's order; absent in older files.
    #[serde(default)]
    pub groups: Option<serde_json::Map<String, serde_json::Value>>,
    /// The beyond-accuracy metrics of each top k; absent in older files.
    #[serde(default)]
    pub beyond_accuracy: Option<Vec<BeyondAccuracyRecord>>,
}

/// The beyond-accuracy metrics of one list length (`mtrec_train::beyond`); a metric no
/// impression defines is null.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct BeyondAccuracyRecord {
    pub k: usize,
    pub ild_category: Option<f64>,
    pub ild_cosine: Option<f64>,
    pub coverage: Option<f64>,
    pub novelty: Option<f64>,
    pub history_overlap: Option<f64>,
}

/// The record of an early stop (`eval.patience`): the step the run stopped at and why.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct EarlyStopRecord {
    pub step: u64,
    pub early_stop: EarlyStopFields,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct EarlyStopFields {
    pub metric: String,
    pub best: f64,
    pub best_step: u64,
    pub evaluations_without_improvement: u64,
    pub patience: u64,
    pub min_delta: f64,
}

/// The records of one `metrics.jsonl`, each kind sorted by step with one record per step (the
/// last one in the file wins, as after a resume that logged a step again).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Metrics {
    /// Training records by step.
    pub train: Vec<TrainRecord>,
    /// Evaluation records by step.
    pub eval: Vec<EvalRecord>,
    /// Records that were logged more than once for the same step (the earlier ones dropped).
    pub duplicates: usize,
    /// The last line had no newline and did not parse: a writer killed mid-line; it is ignored.
    pub torn_last_line: bool,
    /// The last early stop, if the run stopped early.
    pub early_stop: Option<EarlyStopRecord>,
}

impl Metrics {
    /// Reads a `metrics.jsonl`. A malformed line is an error naming `file:line` and what is
    /// wrong, except an unterminated last line (a killed writer), which is skipped.
    pub fn read(path: &Path) -> Result<Metrics, ReportError> {
        let text = std::fs::read_to_string(path).map_err(|error| ReportError::io(path, error))?;
        Self::parse(&text, path)
    }

    /// Parses the text of a `metrics.jsonl`; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Metrics, ReportError> {
        let mut train = BTreeMap::new();
        let mut eval = BTreeMap::new();
        let mut metrics = Metrics::default();
        let lines: Vec<&str> = text.split('\n').collect();
        for (index, line) in lines.iter().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let is_unterminated_last = index + 1 == lines.len();
            let bad =
                |reason: String| ReportError::Parse { path: path.to_path_buf(), line: index + 1, reason };
            let value: serde_json::Value = match serde_json::from_str(line) {
                Ok(value) => value,
                Err(_) if is_unterminated_last => {
                    metrics.torn_last_line = true;
                    continue;
                }
                Err(error) => return Err(bad(format!("not a JSON object: {error}"))),
            };
            if !value.is_object() {
                return Err(bad("not a JSON object".into()));
            }
            if value.get("early_stop").is_some() {
                let record: EarlyStopRecord = serde_json::from_value(value)
                    .map_err(|error| bad(format!("early-stop record: {error}")))?;
                metrics.early_stop = Some(record);
                continue;
            }
            let replaced = if value.get("eval").is_some() {
                let record: EvalRecord = serde_json::from_value(value)
                    .map_err(|error| bad(format!("evaluation record: {error}")))?;
                eval.insert(record.step, record).is_some()
            } else {
                let record: TrainRecord = serde_json::from_value(value)
                    .map_err(|error| bad(format!("training record: {error}")))?;
                train.insert(record.step, record).is_some()
            };
            metrics.duplicates += usize::from(replaced);
        }
        metrics.train = train.into_values().collect();
        metrics.eval = eval.into_values().collect();
        Ok(metrics)
    }

    /// The last step of any record (0 when there is none).
    pub fn last_step(&self) -> u64 {
        let train = self.train.last().map_or(0, |r| r.step);
        let eval = self.eval.last().map_or(0, |r| r.step);
        train.max(eval)
    }

    /// The evaluation record with the highest AUC (the earliest among equals).
    pub fn best_eval(&self) -> Option<&EvalRecord> {
        self.eval.iter().fold(None, |best: Option<&EvalRecord>, r| match best {
            Some(b) if b.auc >= r.auc => Some(b),
            _ => Some(r),
        })
    }

    /// Mean of the training records' `samples_per_s`.
    pub fn mean_samples_per_s(&self) -> Option<f64> {
        mean(self.train.iter().filter_map(|r| r.samples_per_s))
    }

    /// Mean of the training records' `tokens_per_s`.
    pub fn mean_tokens_per_s(&self) -> Option<f64> {
        mean(self.train.iter().filter_map(|r| r.tokens_per_s))
    }

    /// Seconds between the first and the last record that carries a `time`.
    pub fn wall_time_s(&self) -> Option<f64> {
        let times = self.train.iter().filter_map(|r| r.time).chain(self.eval.iter().filter_map(|r| r.time));
        let (first, last) = times.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), t| (a.min(t), b.max(t)));
        (first <= last).then_some(last - first)
    }

    /// Seconds spent in the logged training windows: for each training record, the samples of
    /// the steps since the previous record (`batch_size` per step) over its `samples_per_s`.
    pub fn training_time_s(&self, batch_size: u64) -> Option<f64> {
        let mut previous = 0;
        let mut total = None;
        for record in &self.train {
            let steps = record.step.saturating_sub(previous);
            previous = record.step;
            if let Some(rate) = record.samples_per_s.filter(|r| *r > 0.0) {
                *total.get_or_insert(0.0) += (steps * batch_size) as f64 / rate;
            }
        }
        total
    }
}

fn mean(values: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    (n > 0).then(|| sum / n as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATH: &str = "run/metrics.jsonl";

    #[test]
    fn duplicate_steps_keep_the_last_record_and_records_sort_by_step() {
        let text = concat!(
            "{\"step\":10,\"loss_main\":1.0,\"samples_per_s\":10.0}\n",
            "{\"step\":5,\"loss_main\":2.0,\"samples_per_s\":10.0}\n",
            "{\"step\":10,\"loss_main\":0.5,\"loss_category\":null,\"samples_per_s\":20.0}\n",
            "{\"step\":10,\"eval\":\"dev\",\"auc\":0.6,\"mrr\":0.3,\"ndcg5\":0.3,\"ndcg10\":0.4}\n",
        );
        let m = Metrics::parse(text, Path::new(PATH)).unwrap();
        assert_eq!(m.train.iter().map(|r| r.step).collect::<Vec<_>>(), [5, 10]);
        assert_eq!(m.train[1].loss_main, Some(0.5));
        assert_eq!(m.train[1].loss_category, None);
        assert_eq!(m.duplicates, 1);
        assert_eq!(m.eval.len(), 1);
        assert_eq!(m.last_step(), 10);
        // 5 steps x 4 samples / 10 + 5 x 4 / 20
        assert_eq!(m.training_time_s(4), Some(3.0));
        assert_eq!(m.wall_time_s(), None);
    }

    #[test]
    fn a_malformed_line_names_the_file_and_line_but_a_torn_last_line_is_skipped() {
        let err = Metrics::parse("{\"step\":1}\nnot json\n{\"step\":2}\n", Path::new(PATH)).unwrap_err();
        assert!(err.to_string().starts_with("run/metrics.jsonl:2: not a JSON object"), "{err}");
        let err = Metrics::parse("{\"step\":1,\"eval\":\"dev\",\"auc\":0.5}\n", Path::new(PATH)).unwrap_err();
        assert!(err.to_string().contains(":1: evaluation record: missing field `mrr`"), "{err}");
        let m = Metrics::parse("{\"step\":1}\n{\"step\":2,\"lo", Path::new(PATH)).unwrap();
        assert!(m.torn_last_line);
        assert_eq!(m.train.len(), 1);
    }
}

//! Early stopping on a dev metric (`eval.patience`, `eval.min_delta`, `eval.metric`), as
//! Lightning's `EarlyStopping(monitor, patience, min_delta, mode="max")` counts: an evaluation
//! improves when its value exceeds the best so far by more than `min_delta`; the run stops after
//! `patience` evaluations in a row that do not. The count travels in every checkpoint
//! (`trainer.json`), so a resumed run counts on, and a run that stopped knows it has.
//! Every rank computes the same count: the metrics it watches are all-reduced.
use crate::config::EvalConfig;
use serde::{Deserialize, Serialize};

/// Early stopping's count, as `trainer.json` keeps it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EarlyStopping {
    /// The metric watched (`auc`, `mrr`, `ndcg5`, `ndcg10`).
    pub metric: String,
    /// Its best value so far, and the step of that evaluation.
    pub best: f64,
    pub best_step: u64,
    /// Evaluations since the best one.
    pub since: u64,
    /// The run stopped here: `since` reached `eval.patience`.
    pub stopped: bool,
}

impl EarlyStopping {
    /// The count to go on with: a resumed checkpoint's when it watched the same metric, else a
    /// fresh one. `reschedule` asks a stopped run to go on: its count starts again.
    pub fn resume(
        saved: Option<&EarlyStopping>,
        eval: &EvalConfig,
        reschedule: bool,
    ) -> Option<EarlyStopping> {
        let saved = saved.filter(|s| s.metric == eval.metric.name())?;
        let mut count = saved.clone();
        if reschedule && count.stopped {
            count.since = 0;
        }
        count.stopped = false;
        Some(count)
    }

    /// Counts the evaluation of `step` (`value` of the watched metric); returns whether the run
    /// stops here. With `eval.patience = 0` it only keeps the best.
    pub fn observe(count: &mut Option<EarlyStopping>, eval: &EvalConfig, step: u64, value: f64) -> bool {
        let count = count.get_or_insert_with(|| EarlyStopping {
            metric: eval.metric.name().into(),
            best: f64::NEG_INFINITY,
            best_step: 0,
            since: 0,
            stopped: false,
        });
        if value > count.best + eval.min_delta {
            (count.best, count.best_step, count.since) = (value, step, 0);
        } else {
            count.since += 1;
        }
        count.stopped = eval.patience > 0 && count.since >= eval.patience;
        count.stopped
    }

    /// Why a resumed run has nothing left to do: it stopped early, and this config's patience
    /// would stop it again at once (unless `reschedule`).
    pub fn already_stopped<'a>(
        saved: Option<&'a EarlyStopping>,
        eval: &EvalConfig,
        reschedule: bool,
    ) -> Option<&'a EarlyStopping> {
        saved.filter(|s| {
            s.stopped
                && !reschedule
                && s.metric == eval.metric.name()
                && eval.patience > 0
                && s.since >= eval.patience
        })
    }

    /// One line for the log and the summary.
    pub fn describe(&self, step: u64, eval: &EvalConfig) -> String {
        format!(
            "stopped early at step {step}: {} evaluations without an improvement of {} by more than {} \
             (eval.patience = {}); best {:.4} at step {}",
            self.since, self.metric, eval.min_delta, eval.patience, self.best, self.best_step
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(patience: u64, min_delta: f64) -> EvalConfig {
        EvalConfig { every: 10, patience, min_delta, ..EvalConfig::default() }
    }

    /// Values 0.60, 0.65, 0.655, 0.64, 0.70, 0.69, 0.69 with patience 2 and min_delta 0.01: 0.655
    /// is not an improvement (by 0.005), so the count is 1, 2 -> stop at the 4th evaluation;
    /// with patience 3 the 5th (0.70) resets it and the run goes on to the end.
    #[test]
    fn stops_after_patience_evaluations_without_an_improvement_above_min_delta() {
        let values = [0.60, 0.65, 0.655, 0.64, 0.70, 0.69, 0.69];
        let run = |patience| {
            let config = eval(patience, 0.01);
            let mut count = None;
            let stop = values
                .iter()
                .enumerate()
                .find(|&(i, &v)| EarlyStopping::observe(&mut count, &config, 10 * (i as u64 + 1), v))
                .map(|(i, _)| 10 * (i as u64 + 1));
            (stop, count.unwrap())
        };
        let (stop, count) = run(2);
        assert_eq!(stop, Some(40));
        assert_eq!((count.best, count.best_step, count.since, count.stopped), (0.65, 20, 2, true));
        let (stop, count) = run(3);
        assert_eq!(stop, None);
        assert_eq!((count.best, count.best_step, count.since), (0.70, 50, 2));
    }

    /// A stopped run resumed with the same patience has nothing to do; a larger patience goes
    /// on counting; `--reschedule` starts the count again; another metric starts afresh.
    #[test]
    fn a_stopped_run_knows_it_stopped_unless_asked_to_go_on() {
        let saved = EarlyStopping { metric: "auc".into(), best: 0.7, best_step: 20, since: 2, stopped: true };
        assert!(EarlyStopping::already_stopped(Some(&saved), &eval(2, 0.0), false).is_some());
        assert!(EarlyStopping::already_stopped(Some(&saved), &eval(3, 0.0), false).is_none());
        assert!(EarlyStopping::already_stopped(Some(&saved), &eval(2, 0.0), true).is_none());
        let larger = EarlyStopping::resume(Some(&saved), &eval(3, 0.0), false).unwrap();
        assert_eq!((larger.since, larger.stopped), (2, false));
        let again = EarlyStopping::resume(Some(&saved), &eval(2, 0.0), true).unwrap();
        assert_eq!((again.since, again.best), (0, 0.7));
        let mrr = EvalConfig { metric: crate::config::EvalMetric::Mrr, ..eval(2, 0.0) };
        assert!(EarlyStopping::resume(Some(&saved), &mrr, false).is_none());
    }
}

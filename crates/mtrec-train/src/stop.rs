//! SIGTERM (preemption, `scancel`) and SIGUSR1 (SLURM's time-limit warning) stop a training run
//! at the next step boundary or evaluation round, after a checkpoint. A signal may reach one
//! rank only, or the ranks at different moments, so the ranks agree on it with a collective that
//! every rank calls at the same points: all stop at the same step.
use crate::TrainError;
use mtrec_dist::Collective;
use signal_hook::consts::{SIGTERM, SIGUSR1};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The signals that stop a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Term,
    Usr1,
}

impl std::fmt::Display for Signal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Signal::Term => "SIGTERM",
            Signal::Usr1 => "SIGUSR1",
        })
    }
}

/// The handlers of SIGTERM and SIGUSR1, for as long as a run lasts (before and after, the
/// default action ends the process at once: there is nothing to checkpoint).
#[derive(Debug)]
pub struct StopSignal {
    received: Arc<AtomicUsize>,
    handlers: Vec<signal_hook::SigId>,
}

impl StopSignal {
    pub fn register() -> Result<StopSignal, TrainError> {
        let received = Arc::new(AtomicUsize::new(0));
        let handlers = [SIGTERM, SIGUSR1]
            .into_iter()
            .map(|signal| signal_hook::flag::register_usize(signal, Arc::clone(&received), signal as usize))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TrainError::Dist(format!("cannot install the SIGTERM/SIGUSR1 handlers: {e}")))?;
        Ok(StopSignal { received, handlers })
    }

    /// The signal that reached any rank (SIGTERM before SIGUSR1), the same on every rank. A
    /// collective: every rank calls it at the same points.
    pub fn agreed(&self, collective: &dyn Collective) -> Result<Option<Signal>, TrainError> {
        let received = self.received.load(Ordering::Relaxed);
        let mut votes = [
            f64::from(u8::from(received == SIGTERM as usize)),
            f64::from(u8::from(received == SIGUSR1 as usize)),
        ];
        collective.all_reduce_sum_f64(&mut votes)?;
        Ok(if votes[0] > 0.0 {
            Some(Signal::Term)
        } else if votes[1] > 0.0 {
            Some(Signal::Usr1)
        } else {
            None
        })
    }
}

impl Drop for StopSignal {
    fn drop(&mut self) {
        for id in self.handlers.drain(..) {
            signal_hook::low_level::unregister(id);
        }
    }
}

//! What long loops share: a [`Tick`] called once per round, and a progress bar.
//!
//! A loop calls its `Tick` the same number of times on every rank (a rank with less work runs
//! empty rounds): it tells the watchdog that work goes on, and in training it is where the ranks
//! agree to stop on a signal, so it may be a collective, and an `Err` from it ends the loop.
use crate::TrainError;
use indicatif::{ProgressBar, ProgressStyle};

/// Called once per round of a loop (see the module documentation).
pub type Tick<'a> = &'a dyn Fn() -> Result<(), TrainError>;

/// A progress bar on a terminal (hidden otherwise, and on ranks other than 0).
pub fn progress(len: u64, what: &str, visible: bool) -> ProgressBar {
    let bar = if visible { ProgressBar::new(len) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{msg:>10} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

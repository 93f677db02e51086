//! Ends the job when this rank reports no progress within a timeout: a collective that waits on
//! a dead or stuck peer would otherwise hang every rank forever (PyTorch's NCCL watchdog does the
//! same). Progress is a [`Heartbeat::beat`]; each beat also names the phase the rank is in, so
//! the message says where it stalled. Time is measured on the monotonic clock.
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Exit code of a rank whose watchdog saw no progress for the timeout.
pub const EXIT_STALLED: i32 = 70;

struct Shared {
    origin: Instant,
    /// Milliseconds after `origin` of the last beat.
    last_beat_ms: AtomicU64,
    phase: Mutex<String>,
    finished: AtomicBool,
}

/// What the rank's code holds to report progress; cheap to clone.
#[derive(Clone)]
pub struct Heartbeat(Arc<Shared>);

impl std::fmt::Debug for Heartbeat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Heartbeat").finish()
    }
}

impl Heartbeat {
    /// Work goes on.
    pub fn beat(&self) {
        let ms = self.0.origin.elapsed().as_millis() as u64;
        self.0.last_beat_ms.store(ms, Ordering::Relaxed);
    }

    /// Work goes on, now in `phase` (named in the watchdog's message).
    pub fn phase(&self, phase: impl Into<String>) {
        *self.0.phase.lock().unwrap_or_else(|e| e.into_inner()) = phase.into();
        self.beat();
    }
}

/// The watching thread; it stops watching when dropped.
#[derive(Debug)]
pub struct Watchdog {
    heartbeat: Heartbeat,
}

impl Watchdog {
    /// Starts watching: after `timeout` without a beat the rank prints which rank stalled in
    /// which phase and ends the job ([`crate::abort_job`] with [`EXIT_STALLED`]).
    pub fn start(timeout: Duration) -> Watchdog {
        let shared = Arc::new(Shared {
            origin: Instant::now(),
            last_beat_ms: AtomicU64::new(0),
            phase: Mutex::new("start-up".into()),
            finished: AtomicBool::new(false),
        });
        let watched = Arc::clone(&shared);
        let tick = (timeout / 10).clamp(Duration::from_millis(10), Duration::from_secs(1));
        std::thread::spawn(move || {
            while !watched.finished.load(Ordering::Relaxed) {
                std::thread::sleep(tick);
                let now = watched.origin.elapsed();
                let idle =
                    now.saturating_sub(Duration::from_millis(watched.last_beat_ms.load(Ordering::Relaxed)));
                if idle > timeout && !watched.finished.load(Ordering::Relaxed) {
                    let phase = watched.phase.lock().map(|p| p.clone()).unwrap_or_default();
                    crate::say(&format!(
                        "error: {}: no progress for {:.0} s in {phase} (dist.timeout_s = {}): a \
                         collective is stalled or another rank died; ending the job",
                        crate::who(),
                        idle.as_secs_f64(),
                        timeout.as_secs()
                    ));
                    crate::abort_job(EXIT_STALLED);
                }
            }
        });
        Watchdog { heartbeat: Heartbeat(shared) }
    }

    /// A handle to report progress with.
    pub fn heartbeat(&self) -> Heartbeat {
        self.heartbeat.clone()
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.heartbeat.0.finished.store(true, Ordering::Relaxed);
    }
}

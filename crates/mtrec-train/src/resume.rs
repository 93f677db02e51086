//! Where a run starts: rank 0 prepares the run directory and chooses the checkpoint to resume,
//! every rank proves it sees the same directory and reads the same checkpoint, and a checkpoint
//! this config cannot continue is refused by name.
use crate::TrainError;
use crate::agree::{rank_zero_value, same_on_every_rank};
use crate::checkpoint::{self, Checkpoint};
use crate::config::Config;
use crate::optim::schedule;
use crate::train::{Resume, config_digest};
use mtrec_dist::Collective;
use std::path::Path;
use std::time::Instant;

/// Rank 0's start in the run directory: creates it, removes what killed writers left and the
/// marker of an interrupted run, refuses a new run where checkpoints exist, chooses the
/// checkpoint to resume, and writes the resolved config.
pub(crate) fn prepare_run_dir(config: &Config, resume: &Resume) -> Result<Option<Checkpoint>, TrainError> {
    let run_dir = &config.train.run_dir;
    std::fs::create_dir_all(run_dir).map_err(|e| TrainError::io(run_dir, e))?;
    for stale in checkpoint::remove_stale_temporaries(run_dir)? {
        tracing::info!("removed {}, left by a checkpoint writer that did not finish", stale.display());
    }
    checkpoint::clear_interrupted(run_dir)?;
    let chosen = match resume {
        Resume::No => {
            let existing = checkpoint::list(run_dir);
            if !existing.is_empty() {
                let names: Vec<String> = existing
                    .iter()
                    .map(|(_, d)| d.file_name().unwrap_or_default().to_string_lossy().into())
                    .collect();
                return Err(TrainError::Config(format!(
                    "train.run_dir {} already holds checkpoints ({}): continue that run with --resume auto, \
                     or give this run another train.run_dir",
                    run_dir.display(),
                    names.join(", ")
                )));
            }
            None
        }
        Resume::Auto => {
            let latest = checkpoint::latest(run_dir)?;
            if latest.is_none() {
                tracing::info!(
                    "--resume auto: {} has no checkpoint yet; starting at step 0",
                    run_dir.display()
                );
            }
            latest
        }
        Resume::From(dir) => Some(Checkpoint::open(dir)?),
    };
    checkpoint::write_durably(&run_dir.join("config.toml"), config.to_toml().as_bytes())?;
    Ok(chosen)
}

/// How long a rank waits to see rank 0's token in the run directory.
const SHARED_RUN_DIR_WAIT_S: u64 = 10;

/// Every rank sees the run directory rank 0 writes: rank 0 writes a token of this job into it,
/// and every rank reads it back. A node with a local `train.run_dir` would train on until the
/// first restart, and then not find the checkpoints to resume; it stops the job now instead.
pub(crate) fn check_run_dir_shared(run_dir: &Path, collective: &dyn Collective) -> Result<(), TrainError> {
    let path = run_dir.join(".job-token");
    let token = if collective.placement().is_main() {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let token = format!("{}-{}", std::process::id(), nanos.as_nanos());
        checkpoint::write_durably(&path, token.as_bytes())?;
        token
    } else {
        String::new()
    };
    let token = rank_zero_value(collective, token)?;
    // A network filesystem may show a new file some seconds late (attribute and lookup caches).
    let deadline = Instant::now() + std::time::Duration::from_secs(SHARED_RUN_DIR_WAIT_S);
    let mut seen = std::fs::read_to_string(&path).unwrap_or_default();
    while seen != token && Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(200));
        seen = std::fs::read_to_string(&path).unwrap_or_default();
    }
    if seen != token {
        return Err(TrainError::Config(format!(
            "train.run_dir {} is not the folder rank 0 writes to ({} {}): rank 0 writes the checkpoints there \
             and every rank reads them at a resume, so it must be on a filesystem every node shares",
            run_dir.display(),
            path.display(),
            if seen.is_empty() { "is missing here" } else { "holds another job's token here" }
        )));
    }
    Ok(())
}

/// Every rank opens the checkpoint rank 0 chose and verified, and proves it reads the same one.
pub fn open_chosen_checkpoint(
    chosen: Option<Checkpoint>,
    collective: &dyn Collective,
) -> Result<Option<Checkpoint>, TrainError> {
    let path = chosen.as_ref().map(|c| c.dir.display().to_string()).unwrap_or_default();
    let path = rank_zero_value(collective, path)?;
    if path.is_empty() {
        return Ok(None);
    }
    let checkpoint = match chosen {
        Some(checkpoint) => checkpoint,
        None => Checkpoint::open_unverified(Path::new(&path)).map_err(|e| {
            let reason = match e {
                TrainError::Checkpoint(reason) => reason,
                other => other.to_string(),
            };
            TrainError::Checkpoint(format!("cannot read the checkpoint rank 0 resumes: {reason}"))
        })?,
    };
    let identity = checkpoint.identity()?;
    let describe = |rank0: &[u8], mine: &[u8]| {
        format!("here {}, on rank 0 {}", String::from_utf8_lossy(mine), String::from_utf8_lossy(rank0))
    };
    same_on_every_rank(collective, &format!("checkpoint {path}"), identity.as_bytes(), &describe)?;
    Ok(Some(checkpoint))
}

/// Refuses a checkpoint that this config cannot continue: another model shape, data order
/// (seed, batch size) or, unless asked for, learning-rate schedule.
pub(crate) fn check_resumable(
    ckpt: &Checkpoint,
    config: &Config,
    reschedule: bool,
    log: bool,
) -> Result<(), TrainError> {
    let refuse = |what: String| {
        Err(TrainError::Checkpoint(format!("{}: {what}; refusing to resume", ckpt.dir.display())))
    };
    let (state, digest) = (&ckpt.state, config_digest(config));
    if state.config_digest != digest {
        return refuse(format!(
            "written with a different model configuration (digest {} vs {digest})",
            state.config_digest
        ));
    }
    // The data order is a function of the seed and the step (`sample_cursor` = step x batch).
    if state.seed != config.train.seed {
        return refuse(format!(
            "written with train.seed = {}, this run has {}",
            state.seed, config.train.seed
        ));
    }
    if let Some(was) = state.trainable_layers
        && was != config.model.trainable_layers
    {
        return refuse(format!(
            "written with model.trainable_layers = {was}, this run has {}: the trained parameters, and \
             with them the optimizer's state, differ",
            config.model.trainable_layers
        ));
    }
    if state.sample_cursor != state.step * config.train.batch_size as u64 {
        return refuse(format!(
            "written with train.batch_size = {}, this run has {}",
            state.sample_cursor / state.step.max(1),
            config.train.batch_size
        ));
    }
    let (max_steps, warmup) = (config.train.max_steps, config.optim.warmup_steps);
    if let (Some(was_max), Some(was_warmup)) = (state.max_steps, state.warmup_steps)
        && (was_max, was_warmup) != (max_steps, warmup)
    {
        let next = state.step + 1;
        let change = format!(
            "the learning-rate schedule was train.max_steps = {was_max}, optim.warmup_steps = {was_warmup}, \
             this run has {max_steps} and {warmup}: at step {next} the learning rate would go from {:.3} to \
             {:.3} of its peak",
            schedule(next, was_warmup, was_max),
            schedule(next, warmup, max_steps)
        );
        if !reschedule {
            return refuse(format!("{change}. Resume with --reschedule to switch to this run's schedule"));
        }
        if log {
            tracing::warn!("--reschedule: {change}");
        }
    }
    Ok(())
}

//! The training run, built as torchtitan's trainer is: the components constructed in order
//! ([`train`]: dist -> run directory -> data -> model -> optimizer -> checkpointer -> metrics),
//! then a loop of [`train_step`]s fed by a background input pipeline, after each of which
//! logging, evaluation, checkpointing and the stop on a signal decide for themselves whether
//! their turn has come ([`Trainer::run`]).
//!
//! Failures are returned, never handled here: the binary's one failure path prints them with
//! the rank and ends the job. What every rank must agree on (config, checkpoint, parameters,
//! optimizer state) is proven with [`crate::agree`]; rank 0 alone touches the run directory.
use crate::TrainError;
use crate::agree::{agree_on_config, rank_zero_value, same_on_every_rank};
use crate::checkpoint::{self, Best, Checkpoint, CheckpointWriter, TrainerState};
use crate::config::{Config, EvalConfig};
use crate::device_batch::{Batches, DeviceBatch};
use crate::early_stop::EarlyStopping;
use crate::eval::{eval_impressions, evaluate};
use crate::flat::FlatParams;
use crate::layer_cache::LayerCache;
use crate::metrics::{RankingMetrics, UserGroups};
use crate::optim::{AdamW, schedule};
use crate::progress::progress;
use crate::setup::{self, Loaded};
use crate::step::{StepStats, train_step};
use crate::stop::{Signal, StopSignal};
use crate::vector_cache::{self, CacheSchedule, VectorCache};
use mtrec_data::batch::mix_seed;
use mtrec_data::read::{EvalImpression, TrainImpression};
use mtrec_dist::{Collective, Heartbeat};
use mtrec_model::NewsRecModel;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Device, Tensor};

/// Where a run starts.
#[derive(Debug, Clone, PartialEq)]
pub enum Resume {
    /// From the initial weights, into a run directory without checkpoints.
    No,
    /// From the newest checkpoint of `train.run_dir` that verifies, if it has any.
    Auto,
    /// From this checkpoint folder.
    From(PathBuf),
}

/// How a run starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Start {
    pub resume: Resume,
    /// A resume may switch to this run's learning-rate schedule (`train.max_steps`,
    /// `optim.warmup_steps`); without it a change is refused.
    pub reschedule: bool,
}

/// A run that stopped on a signal, after its checkpoint.
#[derive(Debug, Clone)]
pub struct Stopped {
    pub step: u64,
    pub signal: Signal,
    pub checkpoint: PathBuf,
}

/// What a run reports.
#[derive(Debug)]
pub struct TrainSummary {
    pub steps: u64,
    pub seconds: f64,
    pub samples_per_second: f64,
    pub final_eval: Option<RankingMetrics>,
    pub best: Option<(u64, f64)>,
    pub last_checkpoint: Option<PathBuf>,
    /// Set when a signal stopped the run before `train.max_steps`.
    pub stopped: Option<Stopped>,
    /// Set when early stopping ended the run (this time, or at the checkpoint it resumed): the
    /// step and the count ([`EarlyStopping::describe`] says why).
    pub early_stop: Option<(u64, EarlyStopping)>,
}

/// sha256 over the settings that shape the model's parameters (architecture, heads, encoders):
/// a resumed run must match it. Paths, dropout, data and optimizer settings may change.
pub fn config_digest(config: &Config) -> String {
    let m = &config.model;
    let shape = json!({
        "init": m.init, "layers": m.layers, "hidden_size": m.hidden_size, "heads": m.heads,
        "intermediate_size": m.intermediate_size, "user_encoder": m.user_encoder, "amf": m.amf,
        "amf_subcategory": m.amf_subcategory,
        "heads_on": [config.mtl.category, config.mtl.ner],
    });
    format!("{:x}", Sha256::digest(shape.to_string().as_bytes()))
}

/// Trains per `config`; returns the summary (rank 0 has written everything to `train.run_dir`).
pub fn train(
    config: &Config,
    start: &Start,
    collective: &dyn Collective,
    heartbeat: &Heartbeat,
) -> Result<TrainSummary, TrainError> {
    // dist
    heartbeat.phase("agreeing on the config");
    let placement = collective.placement();
    config.validate_for_world(placement.world_size)?;
    agree_on_config(config, collective)?;
    let device = setup::device(config.train.device, placement.local_rank)?;

    // run directory, and the checkpoint to resume (rank 0 chooses, every rank reads it)
    heartbeat.phase("choosing the checkpoint");
    let chosen = if placement.is_main() { prepare_run_dir(config, &start.resume)? } else { None };
    check_run_dir_shared(&config.train.run_dir, collective)?;
    let resume_from = open_chosen_checkpoint(chosen, collective)?;
    if let Some(ckpt) = &resume_from {
        check_resumable(ckpt, config, start.reschedule, placement.is_main())?;
        let saved = ckpt.state.early_stopping.as_ref();
        if let Some(done) = EarlyStopping::already_stopped(saved, &config.eval, start.reschedule) {
            if placement.is_main() {
                tracing::info!(
                    "{}: this run {}; nothing to do (--reschedule, or a larger eval.patience, goes on)",
                    ckpt.dir.display(),
                    done.describe(ckpt.state.step, &config.eval)
                );
            }
            return Ok(TrainSummary {
                steps: 0,
                seconds: 0.0,
                samples_per_second: 0.0,
                final_eval: None,
                best: Best::read(&config.train.run_dir).map(|b| (b.step, b.auc)),
                last_checkpoint: Some(ckpt.dir.clone()),
                stopped: None,
                early_stop: Some((ckpt.state.step, done.clone())),
            });
        }
    }
    let early = resume_from
        .as_ref()
        .and_then(|c| EarlyStopping::resume(c.state.early_stopping.as_ref(), &config.eval, start.reschedule));

    // data
    heartbeat.phase("loading the shards");
    let loaded = setup::load(config, collective)?;
    let impressions = mtrec_data::read::read_train(&config.data.shards, &loaded.manifest)?;
    // Periodic evaluation needs its split; the one at the end is skipped, with a warning, when the
    // shards cannot give it (no dev split prepped, or a test split without labels).
    let eval = match eval_impressions(config, &loaded.manifest) {
        Ok(impressions) => Some(impressions),
        Err(e) if config.eval.every == 0 => {
            if placement.is_main() {
                tracing::warn!("no evaluation in this run: {e}");
            }
            None
        }
        Err(e) => return Err(e),
    };
    let mut trainer =
        Trainer::build(config, collective, heartbeat, device, &loaded, &impressions, eval, resume_from)?;
    trainer.early = early;
    trainer.run()
}

/// Rank 0's start in the run directory: creates it, removes what killed writers left and the
/// marker of an interrupted run, refuses a new run where checkpoints exist, chooses the
/// checkpoint to resume, and writes the resolved config.
fn prepare_run_dir(config: &Config, resume: &Resume) -> Result<Option<Checkpoint>, TrainError> {
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
fn check_run_dir_shared(run_dir: &Path, collective: &dyn Collective) -> Result<(), TrainError> {
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
fn check_resumable(
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

/// Names and tensors of the optimizer state, for `optimizer.safetensors`.
fn optimizer_tensors(optimizer: &AdamW) -> Vec<(String, Tensor)> {
    vec![
        ("exp_avg".into(), optimizer.exp_avg.shallow_clone()),
        ("exp_avg_sq".into(), optimizer.exp_avg_sq.shallow_clone()),
        ("step".into(), Tensor::from_slice(&[optimizer.step as i64])),
    ]
}

fn restore_optimizer(optimizer: &mut AdamW, checkpoint: &Checkpoint) -> Result<(), TrainError> {
    let step = Tensor::zeros([1], (tch::Kind::Int64, Device::Cpu));
    let targets = [
        ("exp_avg".to_string(), optimizer.exp_avg.shallow_clone()),
        ("exp_avg_sq".to_string(), optimizer.exp_avg_sq.shallow_clone()),
        ("step".to_string(), step.shallow_clone()),
    ];
    checkpoint::read_safetensors_into(&checkpoint.optimizer_file(), &targets)?;
    optimizer.step = step.int64_value(&[0]) as u64;
    Ok(())
}

/// f64 sums of tensors, as bytes: a checksum ranks compare. Summed in pieces of 4M elements,
/// so no f64 copy of a whole tensor is made.
fn checksum(tensors: &[&Tensor]) -> Vec<u8> {
    let sum = |t: &Tensor| -> f64 {
        let flat = t.view([-1]);
        let numel = flat.size()[0];
        (0..numel)
            .step_by(1 << 22)
            .map(|start| {
                let piece = flat.narrow(0, start, (1 << 22).min(numel - start));
                piece.to_kind(tch::Kind::Double).sum(tch::Kind::Double).double_value(&[])
            })
            .sum()
    };
    tensors.iter().flat_map(|t| sum(t).to_le_bytes()).collect()
}

fn describe_checksums(rank0: &[u8], mine: &[u8]) -> String {
    let values = |b: &[u8]| -> Vec<f64> {
        b.chunks(8).map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect()
    };
    format!("sums {:?} here, {:?} on rank 0", values(mine), values(rank0))
}

/// The data a run reads, borrowed by the [`Trainer`].
struct TrainData<'a> {
    loaded: &'a Loaded,
    batches: Batches<'a>,
    steps_per_epoch: u64,
    eval: Option<Vec<EvalImpression>>,
}

/// The components of a run, built in order by [`Trainer::build`].
struct Trainer<'a> {
    config: &'a Config,
    collective: &'a dyn Collective,
    heartbeat: &'a Heartbeat,
    device: Device,
    data: TrainData<'a>,
    // The variables live as long as the model that reads them.
    _vs: tch::nn::VarStore,
    model: NewsRecModel,
    params: FlatParams,
    /// The frozen layers' states of every news item, when `model.layer_cache` applies.
    layer_cache: Option<LayerCache>,
    /// The news-vector cache (`data.vector_cache`) and the schedule the input pipeline follows.
    vector_cache: Option<(VectorCache, CacheSchedule)>,
    optimizer: AdamW,
    start_step: u64,
    checkpoints: Checkpointer,
    metrics: MetricsLogger,
    stop: StopSignal,
    fault: Option<Fault>,
    /// Early stopping's count (`eval.patience`), carried by every checkpoint.
    early: Option<EarlyStopping>,
}

/// A failure injected on purpose, to try how a cluster and its scripts handle a failing rank
/// (`MTREC_FAULT=error@STEP` or `panic@STEP` in one rank's environment): after step STEP the
/// rank fails with an error, or panics.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    Error(u64),
    Panic(u64),
}

impl Fault {
    const VARIABLE: &str = "MTREC_FAULT";

    fn from_env() -> Result<Option<Fault>, TrainError> {
        let Ok(value) = std::env::var(Fault::VARIABLE) else { return Ok(None) };
        let bad = || {
            TrainError::Config(format!("{}={value:?}: expected error@STEP or panic@STEP", Fault::VARIABLE))
        };
        let (kind, step) = value.split_once('@').ok_or_else(bad)?;
        let step = step.parse().map_err(|_| bad())?;
        match kind {
            "error" => Ok(Some(Fault::Error(step))),
            "panic" => Ok(Some(Fault::Panic(step))),
            _ => Err(bad()),
        }
    }

    fn strike(fault: Option<Fault>, step: u64) -> Result<(), TrainError> {
        match fault {
            Some(Fault::Error(at)) if at == step => {
                Err(TrainError::Dist(format!("{} asked for an error after step {step}", Fault::VARIABLE)))
            }
            Some(Fault::Panic(at)) if at == step => {
                panic!("{} asked for a panic after step {step}", Fault::VARIABLE)
            }
            _ => Ok(()),
        }
    }
}

impl<'a> Trainer<'a> {
    #[allow(clippy::too_many_arguments)]
    fn build(
        config: &'a Config,
        collective: &'a dyn Collective,
        heartbeat: &'a Heartbeat,
        device: Device,
        loaded: &'a Loaded,
        impressions: &'a [TrainImpression],
        eval: Option<Vec<EvalImpression>>,
        resume_from: Option<Checkpoint>,
    ) -> Result<Trainer<'a>, TrainError> {
        let main_rank = collective.placement().is_main();
        let sampler = setup::sampler(config, impressions);
        if main_rank && sampler.index().skipped_without_negatives > 0 {
            tracing::warn!(
                "{} clicks of impressions without a non-clicked news item form no sample and are skipped",
                sampler.index().skipped_without_negatives
            );
        }
        let steps_per_epoch = setup::steps_per_epoch(config, &sampler)?;
        let batches = Batches::new(sampler, &loaded.news, &config.data, config.train.batch_size, collective);
        let data = TrainData { loaded, batches, steps_per_epoch, eval };

        // model: a resumed run loads its weights before they move into the flat buffer
        heartbeat.phase("building the model");
        let entity_table = setup::entity_table(config, &config.data.shards)?;
        let (vs, model) = setup::build_model(
            config,
            setup::LabelCounts::of(&loaded.manifest),
            &loaded.model_dir,
            entity_table,
            device,
        )?;
        if let Some(ckpt) = &resume_from {
            heartbeat.phase(format!("loading {}", ckpt.dir.display()));
            checkpoint::load_model(&vs, ckpt)?;
        }
        let mut params = FlatParams::new(&vs);

        // optimizer (the schedule is a pure function of the step)
        let mut optimizer = AdamW::new(&params, config.optim.clone());
        let start_step = resume_from.as_ref().map_or(0, |c| c.state.step);
        if let Some(ckpt) = &resume_from {
            restore_optimizer(&mut optimizer, ckpt)?;
            let state =
                checksum(&[&optimizer.exp_avg, &optimizer.exp_avg_sq, &Tensor::from(optimizer.step as f64)]);
            same_on_every_rank(collective, "the restored optimizer state", &state, &describe_checksums)?;
            if main_rank {
                tracing::info!("resuming from {} (step {start_step})", ckpt.dir.display());
            }
        }
        heartbeat.phase("broadcasting the parameters");
        tch::no_grad(|| collective.broadcast(&mut params.values, 0))?;
        same_on_every_rank(
            collective,
            "the parameters after the broadcast",
            &checksum(&[&params.values]),
            &describe_checksums,
        )?;
        heartbeat.phase("building the frozen-layer cache");
        let beat = || -> Result<(), TrainError> {
            heartbeat.beat();
            Ok(())
        };
        let layer_cache = LayerCache::for_run(config, &model, &loaded.news, device, collective, &beat)?;
        let vector_cache = vector_cache::for_run(config, &model, &loaded.news, device, resume_from.as_ref())?;

        // checkpointer, metrics, signals
        let run_dir = config.train.run_dir.clone();
        let checkpoints = Checkpointer {
            writer: CheckpointWriter::new(&run_dir, config.checkpoint.keep)?,
            // A resumed run competes with the best checkpoint the run has so far.
            // (one written after the resumed step belongs to steps this run replays: not kept)
            best: resume_from.as_ref().and_then(|_| Best::read(&run_dir)).filter(|b| b.step <= start_step),
            last: None,
            main_rank,
            run_dir,
        };
        // Signals are answered from here on (before, their default action ends the process: there
        // is nothing to checkpoint); metrics.jsonl appearing tells a script so.
        let stop = StopSignal::register()?;
        let metrics = MetricsLogger::open(config, main_rank, start_step)?;
        if main_rank {
            tracing::info!(
                world = collective.placement().world_size,
                backend = collective.backend(),
                ?device,
                samples = data.batches.sampler.index().len(),
                steps_per_epoch,
                parameters = params.len,
                shared = params.shared_len(),
                "training {} steps from step {start_step}",
                config.train.max_steps
            );
        }
        let fault = Fault::from_env()?;
        Ok(Trainer {
            config,
            collective,
            heartbeat,
            device,
            data,
            _vs: vs,
            model,
            params,
            layer_cache,
            vector_cache,
            optimizer,
            start_step,
            checkpoints,
            metrics,
            stop,
            fault,
            early: None,
        })
    }

    /// The loop: steps from the input pipeline, then logging, evaluation, checkpoint and stop.
    fn run(mut self) -> Result<TrainSummary, TrainError> {
        let (config, collective, heartbeat) = (self.config, self.collective, self.heartbeat);
        let max_steps = config.train.max_steps;
        let placement = collective.placement();
        let started = Instant::now();
        let mut final_eval = None;
        let mut stopped = None;
        let mut early_stop = None;
        let data = &self.data;
        std::thread::scope(|scope| -> Result<(), TrainError> {
            let batches = spawn_input_pipeline(
                scope,
                config,
                data,
                self.start_step,
                self.device,
                self.layer_cache.as_ref(),
                self.vector_cache.as_ref().map(|(_, schedule)| schedule.clone()),
            );
            for (step, batch) in batches {
                let step_number = step + 1;
                heartbeat.phase(format!("step {step_number}"));
                let lr_scale = schedule(step_number, config.optim.warmup_steps, max_steps);
                let (stats, _) = train_step(
                    &self.model,
                    &mut self.params,
                    &mut self.optimizer,
                    collective,
                    &batch,
                    &config.mtl,
                    lr_scale,
                    mix_seed(&[config.train.seed, step_number, 0x9C]),
                    false,
                    self.vector_cache.as_mut().map(|(cache, _)| cache),
                )?;
                Fault::strike(self.fault, step_number)?;
                let last = step_number == max_steps;
                self.metrics.record(stats, batch.news.titles.tokens as u64 * placement.world_size as u64);
                if self.metrics.due(step_number, last) {
                    self.metrics.write(step_number, data.steps_per_epoch, lr_scale, collective)?;
                }

                let mut signal = self.stop.agreed(collective)?;
                let mut evaluation = None;
                let eval_due = last || (config.eval.every > 0 && step_number % config.eval.every == 0);
                if let (None, Some(impressions), true) = (signal, &data.eval, eval_due) {
                    heartbeat.phase(format!("evaluation after step {step_number}"));
                    let tick = || -> Result<(), TrainError> {
                        heartbeat.beat();
                        self.stop.agreed(collective)?.map_or(Ok(()), |s| Err(TrainError::Stopped(s)))
                    };
                    let news = &data.loaded.news;
                    let cache = self.layer_cache.as_ref();
                    let eval_started = Instant::now();
                    match evaluate(
                        &self.model,
                        news,
                        impressions,
                        config,
                        self.device,
                        collective,
                        &tick,
                        cache,
                    ) {
                        Ok((metrics, groups)) => {
                            self.metrics.write_eval(
                                step_number,
                                &metrics,
                                &groups,
                                eval_started.elapsed(),
                            )?;
                            let value = config.eval.metric.of(&metrics);
                            if EarlyStopping::observe(&mut self.early, &config.eval, step_number, value) {
                                early_stop = self.early.clone().map(|count| (step_number, count));
                            }
                            evaluation = Some(metrics);
                        }
                        Err(TrainError::Stopped(s)) => signal = Some(s),
                        Err(e) => return Err(e),
                    }
                }
                let checkpoint_due = last
                    || evaluation.is_some()
                    || signal.is_some()
                    || (config.checkpoint.every > 0 && step_number % config.checkpoint.every == 0);
                if checkpoint_due && placement.is_main() {
                    heartbeat.phase(format!("checkpoint at step {step_number}"));
                    let mut state = trainer_state(
                        config,
                        data.steps_per_epoch,
                        placement.world_size,
                        step_number,
                        evaluation.as_ref(),
                    );
                    let cache_rows = self
                        .vector_cache
                        .as_ref()
                        .map(|(cache, _)| cache.live_rows(step_number))
                        .filter(|rows| rows[0].1.size()[0] > 0) // nothing a later step could read
                        .unwrap_or_default();
                    state.vector_cache_rows = cache_rows.first().map(|(_, nids)| nids.size()[0] as u64);
                    state.early_stopping = self.early.clone();
                    self.checkpoints.save(
                        state,
                        &self.params,
                        &self.optimizer,
                        &cache_rows,
                        evaluation.as_ref(),
                    )?;
                }
                if evaluation.is_some() {
                    final_eval = evaluation;
                }
                self.metrics.window_starts(); // after evaluation and checkpoint
                if let Some(signal) = signal {
                    heartbeat.phase(format!("stopping after step {step_number} on {signal}"));
                    let checkpoint = self.checkpoints.stop_at(step_number)?;
                    // Every rank waits until rank 0's checkpoint is on disk, then all stop.
                    collective.all_reduce_sum_f64(&mut [0.0])?;
                    stopped = Some(Stopped { step: step_number, signal, checkpoint });
                    return Ok(());
                }
                if let Some((step, count)) = &early_stop {
                    self.metrics.write_early_stop(*step, count, &config.eval)?;
                    return Ok(());
                }
            }
            Ok(())
        })?;
        self.checkpoints.writer.finish()?;
        self.metrics.bar.finish_and_clear();
        if let (Some((cache, _)), true) = (&self.vector_cache, placement.is_main()) {
            tracing::info!(
                "news-vector cache: {} of the {} news of this run's global batches read from it ({:.1}%)",
                cache.hits,
                cache.news,
                100.0 * cache.hits as f64 / cache.news.max(1) as f64
            );
        }

        let seconds = started.elapsed().as_secs_f64();
        let end = stopped
            .as_ref()
            .map(|s| s.step)
            .or(early_stop.as_ref().map(|(step, _)| *step))
            .unwrap_or(max_steps);
        let steps = end.saturating_sub(self.start_step);
        Ok(TrainSummary {
            steps,
            seconds,
            samples_per_second: (steps * config.train.batch_size as u64) as f64 / seconds.max(1e-9),
            final_eval,
            best: self.checkpoints.best.map(|b| (b.step, b.auc)),
            last_checkpoint: self.checkpoints.last,
            stopped,
            early_stop,
        })
    }
}

/// Assembles and uploads the batches of steps `start_step..max_steps` in a background thread,
/// ahead of the step that runs (`data.prefetch` of them).
fn spawn_input_pipeline<'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    config: &'scope Config,
    data: &'scope TrainData<'_>,
    start_step: u64,
    device: Device,
    cache: Option<&'scope LayerCache>,
    mut schedule: Option<CacheSchedule>,
) -> std::sync::mpsc::Receiver<(u64, DeviceBatch)> {
    let (tx, rx) = std::sync::mpsc::sync_channel(config.data.prefetch.max(1));
    scope.spawn(move || {
        let mut epoch_order: Option<(u64, Vec<u32>)> = None;
        for step in start_step..config.train.max_steps {
            let epoch = step / data.steps_per_epoch;
            if epoch_order.as_ref().is_none_or(|(e, _)| *e != epoch) {
                epoch_order = Some((epoch, data.batches.sampler.epoch_order(epoch)));
            }
            let order = &epoch_order.as_ref().expect("set above").1;
            let reuse = schedule.as_mut().map(|s| (s, step + 1));
            let batch = data.batches.device(epoch, order, step % data.steps_per_epoch, device, cache, reuse);
            if tx.send((step, batch)).is_err() {
                return; // the loop ended
            }
        }
    });
    rx
}

/// `trainer.json` of the checkpoint at `step`.
fn trainer_state(
    config: &Config,
    steps_per_epoch: u64,
    world_size: usize,
    step: u64,
    evaluation: Option<&RankingMetrics>,
) -> TrainerState {
    TrainerState {
        step,
        epoch: step / steps_per_epoch,
        sample_cursor: step * config.train.batch_size as u64,
        seed: config.train.seed,
        config_digest: config_digest(config),
        world_size,
        metrics: evaluation.map(|m| eval_record(step, &config.eval.split, m)),
        model_sha256: String::new(),
        optimizer_sha256: String::new(),
        max_steps: Some(config.train.max_steps),
        warmup_steps: Some(config.optim.warmup_steps),
        vector_cache_rows: None,
        trainable_layers: Some(config.model.trainable_layers),
        early_stopping: None,
    }
}

fn eval_record(step: u64, split: &str, m: &RankingMetrics) -> serde_json::Value {
    json!({"step": step, "eval": split, "auc": m.auc, "mrr": m.mrr, "ndcg5": m.ndcg5,
        "ndcg10": m.ndcg10, "impressions": m.impressions})
}

/// Rank 0's checkpoints: written in the background, the best by evaluation AUC kept.
struct Checkpointer {
    writer: CheckpointWriter,
    run_dir: PathBuf,
    best: Option<Best>,
    last: Option<PathBuf>,
    main_rank: bool,
}

impl Checkpointer {
    fn save(
        &mut self,
        state: TrainerState,
        params: &FlatParams,
        optimizer: &AdamW,
        cache_rows: &[(String, Tensor)],
        evaluation: Option<&RankingMetrics>,
    ) -> Result<(), TrainError> {
        let step = state.step;
        let improved = evaluation.filter(|m| self.best.as_ref().is_none_or(|b| m.auc > b.auc));
        if let Some(m) = improved {
            self.best = Some(Best::at(step, m.auc));
        }
        let protect = self.best.as_ref().map(|b| self.run_dir.join(&b.checkpoint));
        let mut training_state = optimizer_tensors(optimizer);
        training_state.extend(cache_rows.iter().map(|(name, t)| (name.clone(), t.shallow_clone())));
        let dir = self.writer.submit(&params.master_tensors(), &training_state, state, protect)?;
        if improved.is_some() {
            self.writer.finish()?; // best.json only ever names a complete checkpoint
            self.best.as_ref().expect("set above").write(&self.run_dir)?;
        }
        self.last = Some(dir);
        Ok(())
    }

    /// Waits for the checkpoint of `step` and marks the run as interrupted there (rank 0).
    fn stop_at(&mut self, step: u64) -> Result<PathBuf, TrainError> {
        if self.main_rank {
            self.writer.finish()?;
            checkpoint::mark_interrupted(&self.run_dir, step)?;
        }
        Ok(checkpoint::step_dir(&self.run_dir, step))
    }
}

/// `metrics.jsonl` (rank 0), the progress bar, and the running totals between log steps.
struct MetricsLogger {
    file: Option<std::fs::File>,
    every: u64,
    lr: (f64, f64),
    bar: indicatif::ProgressBar,
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
    fn open(config: &Config, main_rank: bool, start_step: u64) -> Result<MetricsLogger, TrainError> {
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
        let bar = progress(config.train.max_steps, "train", main_rank);
        bar.set_position(start_step);
        bar.reset_eta(); // the steps before a resume took no time in this process
        Ok(MetricsLogger {
            file,
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

    fn record(&mut self, stats: StepStats, global_tokens: u64) {
        self.pending.push(stats);
        self.samples += self.batch_size;
        self.tokens += global_tokens;
        self.bar.inc(1);
    }

    fn due(&self, step: u64, last: bool) -> bool {
        last || step.is_multiple_of(self.every)
    }

    fn append(&mut self, record: &serde_json::Value) -> Result<(), TrainError> {
        if let Some(file) = &mut self.file {
            writeln!(file, "{record}").map_err(|e| TrainError::Checkpoint(format!("metrics.jsonl: {e}")))?;
        }
        Ok(())
    }

    /// The window's record: losses of the global batch (one all-reduce), gradient statistics,
    /// learning rates and throughput; the device's values read in one copy ([`window_values`]).
    fn write(
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

    fn write_eval(
        &mut self,
        step: u64,
        metrics: &RankingMetrics,
        groups: &UserGroups,
        took: std::time::Duration,
    ) -> Result<(), TrainError> {
        if self.main_rank {
            let line = format!(
                "step {step}: {}: {metrics} ({:.1} s); by user group:\n{groups}",
                self.split,
                took.as_secs_f64()
            );
            let line = line.trim_end();
            if self.bar.is_hidden() {
                tracing::info!("{line}");
            } else {
                self.bar.println(line);
            }
        }
        let mut record = eval_record(step, &self.split, metrics);
        record["time"] = json!(unix_time());
        record["seconds"] = json!(took.as_secs_f64());
        record["groups"] = groups.to_json();
        self.append(&record)
    }

    /// The record (and log line) of an early stop.
    fn write_early_stop(
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
    fn window_starts(&mut self) {
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

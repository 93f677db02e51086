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
use crate::agree::{agree_on_config, same_on_every_rank};
use crate::beyond::TrainingClicks;
use crate::checkpoint::{self, Best, Checkpoint, CheckpointWriter, TrainerState};
use crate::config::{Config, EvalMetric};
use crate::device_batch::{Batches, DeviceBatch};
use crate::early_stop::EarlyStopping;
use crate::eval::{Evaluation, eval_impressions, evaluate};
use crate::flat::FlatParams;
use crate::layer_cache::LayerCache;
use crate::logger::{MetricsLogger, eval_record};
use crate::metrics::RankingMetrics;
use crate::optim::{AdamW, schedule};
use crate::resume::{check_resumable, check_run_dir_shared, open_chosen_checkpoint, prepare_run_dir};
use crate::setup::{self, Loaded};
use crate::step::train_step;
use crate::stop::{Signal, StopSignal};
use crate::vector_cache::{self, CacheSchedule, VectorCache};
use mtrec_data::batch::mix_seed;
use mtrec_data::read::{EvalImpression, TrainImpression};
use mtrec_dist::{Collective, Heartbeat};
use mtrec_model::NewsRecModel;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::path::PathBuf;
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
    /// The last evaluation: the metrics, by user group, beyond accuracy, the category head.
    pub final_eval: Option<Evaluation>,
    /// The best checkpoint by `eval.metric` (`best.json`).
    pub best: Option<Best>,
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
                best: Best::read(&config.train.run_dir),
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
    setup::check_ner_labels(config, &loaded.manifest)?;
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
    /// The training clicks evaluation's novelty weighs news by.
    clicks: TrainingClicks,
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
        let clicks = TrainingClicks::count(impressions, loaded.news.len());
        let data = TrainData { loaded, batches, steps_per_epoch, eval, clicks };

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
            // (one written after the resumed step belongs to steps this run replays: not kept; one
            // chosen by another eval.metric does not compete)
            best: resume_from
                .as_ref()
                .and_then(|_| Best::read(&run_dir))
                .filter(|b| b.step <= start_step && b.metric == config.eval.metric.name()),
            metric: config.eval.metric,
            min_delta: config.eval.min_delta,
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
                        &data.clicks,
                        config,
                        self.device,
                        collective,
                        &tick,
                        cache,
                    ) {
                        Ok(measured) => {
                            self.metrics.write_eval(step_number, &measured, eval_started.elapsed())?;
                            let value = config.eval.metric.of(&measured.metrics);
                            if EarlyStopping::observe(&mut self.early, &config.eval, step_number, value) {
                                early_stop = self.early.clone().map(|count| (step_number, count));
                            }
                            evaluation = Some(measured.metrics);
                            final_eval = Some(measured);
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
            best: self.checkpoints.best,
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

/// Rank 0's checkpoints: written in the background, the best by `eval.metric` kept; an
/// evaluation is better when it exceeds the best by more than `eval.min_delta`, as early stopping
/// counts, so that the best step early stopping names is the one kept.
struct Checkpointer {
    writer: CheckpointWriter,
    run_dir: PathBuf,
    best: Option<Best>,
    metric: EvalMetric,
    min_delta: f64,
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
        let value = evaluation.map(|m| self.metric.of(m));
        let improved = value.filter(|&v| self.best.as_ref().is_none_or(|b| v > b.value + self.min_delta));
        if let Some(v) = improved {
            self.best = Some(Best::at(step, self.metric.name(), v));
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

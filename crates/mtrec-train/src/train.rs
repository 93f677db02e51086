//! The training run: components built in a fixed order (dist -> data -> model -> optimizer ->
//! schedule -> checkpointer -> metrics), then the loop of [`train_step`]s fed by a background
//! input pipeline.
use crate::TrainError;
use crate::checkpoint::{self, Best, Checkpoint, TrainerState};
use crate::config::Config;
use crate::device_batch::DeviceBatch;
use crate::eval::{eval_impressions, evaluate, progress};
use crate::flat::FlatParams;
use crate::metrics::RankingMetrics;
use crate::optim::{AdamW, schedule};
use crate::setup::{self, Loaded};
use crate::step::{StepStats, scalar, train_step};
use mtrec_data::batch::{Sampler, mix_seed};
use mtrec_dist::Collective;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;
use tch::Tensor;

/// Where a run starts.
#[derive(Debug, Clone, PartialEq)]
pub enum Resume {
    /// From the initial weights.
    No,
    /// From the newest complete checkpoint of `train.run_dir`, if there is one.
    Auto,
    /// From this checkpoint folder.
    From(PathBuf),
}

/// What a finished run reports.
#[derive(Debug)]
pub struct TrainSummary {
    pub steps: u64,
    pub seconds: f64,
    pub samples_per_second: f64,
    pub final_eval: Option<RankingMetrics>,
    pub best: Option<(u64, f64)>,
    pub last_checkpoint: Option<PathBuf>,
}

/// sha256 over the settings that shape the model's parameters (architecture, heads, encoders):
/// a resumed run must match it. Paths, dropout, data and optimizer settings may change.
pub fn config_digest(config: &Config) -> String {
    let m = &config.model;
    let shape = json!({
        "init": m.init, "layers": m.layers, "hidden_size": m.hidden_size, "heads": m.heads,
        "intermediate_size": m.intermediate_size, "user_encoder": m.user_encoder, "amf": m.amf,
        "heads_on": [config.mtl.category, config.mtl.ner],
    });
    format!("{:x}", Sha256::digest(shape.to_string().as_bytes()))
}

/// Appends JSON lines to `metrics.jsonl` (rank 0 only).
struct MetricsLog {
    file: Option<std::fs::File>,
}

impl MetricsLog {
    fn open(run_dir: &Path, enabled: bool) -> Result<Self, TrainError> {
        let path = run_dir.join("metrics.jsonl");
        let file = enabled
            .then(|| std::fs::OpenOptions::new().create(true).append(true).open(&path))
            .transpose()
            .map_err(|e| TrainError::io(&path, e))?;
        Ok(MetricsLog { file })
    }

    fn write(&mut self, value: serde_json::Value) -> Result<(), TrainError> {
        if let Some(file) = &mut self.file {
            writeln!(file, "{value}").map_err(|e| TrainError::Checkpoint(format!("metrics.jsonl: {e}")))?;
        }
        Ok(())
    }
}

/// Running totals between log steps, and over the run.
struct LogWindow {
    pending: Vec<StepStats>,
    samples: u64,
    tokens: u64,
    /// When the window's first step began (evaluation and checkpoints excluded).
    started: Instant,
    conflicts: f64,
    surgery_steps: f64,
}

fn mean(values: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    (n > 0).then(|| sum / n as f64)
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
fn all_rank_losses(pending: &[StepStats], collective: &dyn Collective) -> Result<WindowLosses, TrainError> {
    let Some(first) = pending.first() else {
        return Ok(WindowLosses { main: None, category: None, ner: None });
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
    let means = Vec::<f64>::try_from(means.to_kind(tch::Kind::Double).to_device(tch::Device::Cpu))
        .expect("three f64 values");
    Ok(WindowLosses {
        main: Some(means[0]),
        category: first.loss_category.is_some().then_some(means[1]),
        ner: first.loss_ner.is_some().then_some(means[2]),
    })
}

/// Ends the process when no step finishes within the timeout: a collective that waits on a dead
/// or stuck peer would otherwise hang the job. Under mpirun/srun a rank exiting non-zero makes
/// the launcher end the other ranks.
struct Watchdog {
    last_beat: Arc<AtomicU64>,
    finished: Arc<AtomicBool>,
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Watchdog {
    fn start(rank: usize, timeout_s: u64) -> Watchdog {
        let last_beat = Arc::new(AtomicU64::new(now_secs()));
        let finished = Arc::new(AtomicBool::new(false));
        let (seen, done) = (Arc::clone(&last_beat), Arc::clone(&finished));
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(std::time::Duration::from_secs(1));
                let idle = now_secs().saturating_sub(seen.load(Ordering::Relaxed));
                if idle > timeout_s {
                    eprintln!(
                        "error: rank {rank}: no training progress for {idle} s (dist.timeout_s = {timeout_s}): \
                         a collective is stalled or another rank died; ending the job"
                    );
                    std::process::exit(crate::EXIT_STALLED);
                }
            }
        });
        Watchdog { last_beat, finished }
    }

    fn beat(&self) {
        self.last_beat.store(now_secs(), Ordering::Relaxed);
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.finished.store(true, Ordering::Relaxed);
    }
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
    let tensors: std::collections::HashMap<String, Tensor> =
        checkpoint.optimizer_tensors()?.into_iter().collect();
    let get = |name: &str| {
        tensors.get(name).ok_or_else(|| {
            TrainError::Checkpoint(format!(
                "{}: optimizer.safetensors has no {name}",
                checkpoint.dir.display()
            ))
        })
    };
    let (m, v) = (get("exp_avg")?, get("exp_avg_sq")?);
    if m.size() != optimizer.exp_avg.size() || v.size() != optimizer.exp_avg_sq.size() {
        return Err(TrainError::Checkpoint(format!(
            "{}: optimizer state has {:?} elements, the model {:?}",
            checkpoint.dir.display(),
            m.size(),
            optimizer.exp_avg.size()
        )));
    }
    tch::no_grad(|| {
        optimizer.exp_avg.copy_(m);
        optimizer.exp_avg_sq.copy_(v);
    });
    optimizer.step = get("step")?.int64_value(&[0]) as u64;
    Ok(())
}

/// Makes the parameters identical on all ranks (rank 0's) and proves it with a checksum.
fn synchronise_parameters(params: &mut FlatParams, collective: &dyn Collective) -> Result<(), TrainError> {
    tch::no_grad(|| collective.broadcast(&mut params.values, 0))?;
    let mine = params.values.to_kind(tch::Kind::Double).sum(tch::Kind::Double);
    let mut reference = mine.copy();
    collective.broadcast(&mut reference, 0)?;
    let mut mismatches = [f64::from(mine.ne_tensor(&reference).int64_value(&[]) as i32)];
    collective.all_reduce_sum_f64(&mut mismatches)?;
    if mismatches[0] > 0.0 {
        return Err(TrainError::Dist(format!(
            "parameters differ on {} rank(s) after the broadcast",
            mismatches[0]
        )));
    }
    Ok(())
}

/// Trains per `config`; returns the summary (rank 0 has written everything to `train.run_dir`).
pub fn train(
    config: &Config,
    resume: Resume,
    collective: &dyn Collective,
) -> Result<TrainSummary, TrainError> {
    // dist
    let placement = collective.placement();
    config.validate_for_world(placement.world_size)?;
    let main_rank = placement.is_main();
    let device = setup::device(config.train.device, placement.local_rank)?;
    let run_dir = config.train.run_dir.clone();
    if main_rank {
        std::fs::create_dir_all(&run_dir).map_err(|e| TrainError::io(&run_dir, e))?;
        let path = run_dir.join("config.toml");
        std::fs::write(&path, config.to_toml()).map_err(|e| TrainError::io(&path, e))?;
    }

    // data
    let Loaded { model_dir, manifest, news } = setup::load(config)?;
    let impressions = mtrec_data::read::read_train(&config.data.shards, &manifest)?;
    // Periodic evaluation needs its split; the one at the end is skipped, with a warning, when the
    // shards cannot give it (no dev split prepped, or a test split without labels).
    let eval_impressions = match eval_impressions(config, &manifest) {
        Ok(impressions) => Some(impressions),
        Err(e) if config.eval.every == 0 => {
            if main_rank {
                tracing::warn!("no evaluation in this run: {e}");
            }
            None
        }
        Err(e) => return Err(e),
    };
    let sampler = Sampler::new(&impressions, config.train.seed, config.data.negatives, config.data.history);
    if main_rank && sampler.index().skipped_without_negatives > 0 {
        tracing::warn!(
            "{} clicks of impressions without a non-clicked news item form no sample and are skipped",
            sampler.index().skipped_without_negatives
        );
    }
    let steps_per_epoch = sampler.steps_per_epoch(config.train.batch_size);
    if steps_per_epoch == 0 {
        return Err(TrainError::Config(format!(
            "train.batch_size = {} exceeds the {} training samples in {}",
            config.train.batch_size,
            sampler.index().len(),
            config.data.shards.display()
        )));
    }

    // model
    let entity_table = setup::entity_table(config, &config.data.shards)?;
    let (vs, model) =
        setup::build_model(config, setup::LabelCounts::of(&manifest), &model_dir, entity_table, device)?;
    // checkpointer: a resumed run loads its weights before they move into the flat buffer
    let digest = config_digest(config);
    let resume_from = match &resume {
        Resume::No => None,
        Resume::Auto => checkpoint::latest(&run_dir),
        Resume::From(dir) => Some(Checkpoint::open(dir)?),
    };
    if let Some(ckpt) = &resume_from {
        if ckpt.state.config_digest != digest {
            return Err(TrainError::Checkpoint(format!(
                "{}: written with a different model configuration (digest {} vs {digest}); refusing to resume",
                ckpt.dir.display(),
                ckpt.state.config_digest
            )));
        }
        // The data order is a function of the seed and the step (`sample_cursor` = step x batch):
        // either changed, the resumed run would not continue the interrupted one.
        let refuse = |what: String| {
            Err(TrainError::Checkpoint(format!("{}: {what}; refusing to resume", ckpt.dir.display())))
        };
        if ckpt.state.seed != config.train.seed {
            return refuse(format!(
                "written with train.seed = {}, this run has {}",
                ckpt.state.seed, config.train.seed
            ));
        }
        if ckpt.state.sample_cursor != ckpt.state.step * config.train.batch_size as u64 {
            return refuse(format!(
                "written with train.batch_size = {}, this run has {}",
                ckpt.state.sample_cursor / ckpt.state.step.max(1),
                config.train.batch_size
            ));
        }
        checkpoint::load_model(&vs, ckpt)?;
    }
    let mut params = FlatParams::new(&vs, setup::compute_kind(config, device));

    // optimizer, schedule (a pure function of the step)
    let mut optimizer = AdamW::new(&params, config.optim.clone());
    let mut start_step = 0;
    if let Some(ckpt) = &resume_from {
        restore_optimizer(&mut optimizer, ckpt)?;
        start_step = ckpt.state.step;
        if main_rank {
            tracing::info!("resuming from {} (step {start_step})", ckpt.dir.display());
        }
    }
    synchronise_parameters(&mut params, collective)?;
    params.refresh_compute_copy();

    // metrics
    let mut log = MetricsLog::open(&run_dir, main_rank)?;
    if main_rank {
        tracing::info!(
            world = placement.world_size,
            backend = collective.backend(),
            ?device,
            samples = sampler.index().len(),
            steps_per_epoch,
            parameters = params.len,
            shared = params.shared_len(),
            "training {} steps from step {start_step}",
            config.train.max_steps
        );
    }

    let stop_requested = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGUSR1] {
        signal_hook::flag::register(signal, Arc::clone(&stop_requested))
            .map_err(|e| TrainError::Dist(format!("signal handler: {e}")))?;
    }
    let heartbeat = Watchdog::start(placement.rank, config.dist.timeout_s);

    let max_steps = config.train.max_steps;
    let bar = progress(max_steps, "train", main_rank);
    bar.set_position(start_step);
    bar.reset_eta(); // the steps before a resume took no time in this process
    let mut window = LogWindow {
        pending: Vec::new(),
        samples: 0,
        tokens: 0,
        started: Instant::now(),
        conflicts: 0.0,
        surgery_steps: 0.0,
    };
    // A resumed run competes with the best checkpoint the run has so far.
    let mut best = resume_from.as_ref().and_then(|_| Best::read(&run_dir));
    let mut last_checkpoint = None;
    let mut final_eval = None;
    let started = Instant::now();
    let (rank, world) = (placement.rank, placement.world_size);

    let mut writer = checkpoint::CheckpointWriter::new(&run_dir, config.checkpoint.keep)?;
    let state_at = |step: u64, metrics: Option<serde_json::Value>| TrainerState {
        step,
        epoch: step / steps_per_epoch,
        sample_cursor: step * config.train.batch_size as u64,
        seed: config.train.seed,
        config_digest: digest.clone(),
        world_size: world,
        metrics,
        model_sha256: String::new(),
        optimizer_sha256: String::new(),
    };

    std::thread::scope(|scope| -> Result<(), TrainError> {
        // Input pipeline: assembles and uploads the next batches while the current step runs.
        let (tx, rx) = std::sync::mpsc::sync_channel::<(u64, DeviceBatch, u64)>(config.data.prefetch.max(1));
        let sampler = &sampler;
        let news = &news;
        let labelled_tokens: Vec<u32> =
            news.ner_tags.iter().map(|tags| tags.iter().filter(|&&t| t >= 0).count() as u32).collect();
        scope.spawn(move || {
            let mut epoch_order: Option<(u64, Vec<u32>)> = None;
            for step in start_step..max_steps {
                let epoch = step / steps_per_epoch;
                if epoch_order.as_ref().is_none_or(|(e, _)| *e != epoch) {
                    epoch_order = Some((epoch, sampler.epoch_order(epoch)));
                }
                let order = &epoch_order.as_ref().expect("set above").1;
                let in_epoch = step % steps_per_epoch;
                let samples = sampler.rank_samples(order, in_epoch, config.train.batch_size, rank, world);
                let host = sampler.assemble(epoch, &samples);
                let global =
                    sampler.global_counts(epoch, order, in_epoch, config.train.batch_size, &labelled_tokens);
                let batch = DeviceBatch::new(&host, news, global, world, device);
                let tokens = batch.news.titles.tokens as u64;
                if tx.send((step, batch, tokens)).is_err() {
                    return;
                }
            }
        });

        for (step, batch, tokens) in rx {
            let step_number = step + 1;
            let lr_scale = schedule(step_number, config.optim.warmup_steps, max_steps);
            let (stats, _) = train_step(
                &model,
                &mut params,
                &mut optimizer,
                collective,
                &batch,
                &config.mtl,
                lr_scale,
                mix_seed(&[config.train.seed, step_number, 0x9C]),
                false,
            )?;
            heartbeat.beat();
            window.pending.push(stats);
            window.samples += config.train.batch_size as u64;
            window.tokens += tokens * world as u64;
            bar.inc(1);

            let last = step_number == max_steps;
            let log_now = step_number % config.log.every.max(1) == 0 || last;
            if log_now {
                let pending = std::mem::take(&mut window.pending);
                let losses = all_rank_losses(&pending, collective)?;
                let conflicts: Vec<f64> =
                    pending.iter().filter_map(|s| s.surgery.as_ref().map(|g| scalar(&g.conflict))).collect();
                window.conflicts += conflicts.iter().sum::<f64>();
                window.surgery_steps += conflicts.len() as f64;
                // Read after the losses: the device has finished the window's steps.
                let elapsed = window.started.elapsed().as_secs_f64().max(1e-9);
                let record = json!({
                    "step": step_number,
                    "epoch": step / steps_per_epoch,
                    "loss_main": losses.main,
                    "loss_category": losses.category,
                    "loss_ner": losses.ner,
                    "cos_main_aux": mean(pending.iter().filter_map(|s| s.surgery.as_ref().map(|g| scalar(&g.cosine)))),
                    "conflict": mean(conflicts.iter().copied()),
                    "conflict_rate": (window.surgery_steps > 0.0).then(|| window.conflicts / window.surgery_steps),
                    "grad_norm_main": mean(pending.iter().map(|s| scalar(&s.grad_norm_main))),
                    "grad_norm_aux": mean(pending.iter().filter_map(|s| s.grad_norm_aux.as_ref().map(scalar))),
                    "grad_norm": mean(pending.iter().map(|s| scalar(&s.grad_norm))),
                    "lr_bert": config.optim.lr_bert * lr_scale,
                    "lr_task": config.optim.lr_task * lr_scale,
                    "samples_per_s": window.samples as f64 / elapsed,
                    "tokens_per_s": window.tokens as f64 / elapsed,
                });
                window.samples = 0;
                window.tokens = 0;
                if main_rank {
                    bar.set_message(format!("loss {:.4}", record["loss_main"].as_f64().unwrap_or(f64::NAN)));
                    if bar.is_hidden() {
                        tracing::info!("{record}");
                    }
                }
                log.write(record)?;
            }

            // Stop on a signal that reached any rank: all ranks agree at this step boundary.
            let mut stop = [f64::from(u8::from(stop_requested.load(Ordering::Relaxed)))];
            collective.all_reduce_sum_f64(&mut stop)?;
            let interrupted = stop[0] > 0.0;

            let eval_now = !interrupted
                && eval_impressions.is_some()
                && (last || (config.eval.every > 0 && step_number % config.eval.every == 0));
            let mut eval_record = None;
            if eval_now {
                let metrics = evaluate(
                    &model,
                    news,
                    eval_impressions.as_deref().expect("checked"),
                    config,
                    device,
                    collective,
                    &|| heartbeat.beat(),
                )?;
                let record = json!({"step": step_number, "eval": config.eval.split, "auc": metrics.auc,
                    "mrr": metrics.mrr, "ndcg5": metrics.ndcg5, "ndcg10": metrics.ndcg10,
                    "impressions": metrics.impressions});
                if main_rank {
                    let line = format!("step {step_number}: {}: {metrics}", config.eval.split);
                    if bar.is_hidden() {
                        tracing::info!("{line}");
                    } else {
                        bar.println(line);
                    }
                }
                log.write(record.clone())?;
                eval_record = Some(record);
                final_eval = Some(metrics);
                heartbeat.beat();
            }
            let checkpoint_now = last
                || eval_now
                || interrupted
                || (config.checkpoint.every > 0 && step_number % config.checkpoint.every == 0);
            if checkpoint_now && main_rank {
                let dir = checkpoint::step_dir(&run_dir, step_number);
                if let Some(auc) = eval_record.as_ref().and_then(|r| r["auc"].as_f64())
                    && best.as_ref().is_none_or(|b| auc > b.auc)
                {
                    best = Some(Best { step: step_number, auc, checkpoint: dir.clone() });
                }
                writer.submit(
                    &params.master_tensors(),
                    &optimizer_tensors(&optimizer),
                    state_at(step_number, eval_record.clone()),
                    best.as_ref().map(|b| b.checkpoint.clone()),
                )?;
                if let Some(b) = best.as_ref().filter(|b| b.step == step_number) {
                    writer.finish()?; // best.json only ever names a complete checkpoint
                    b.write(&run_dir)?;
                }
                last_checkpoint = Some(dir);
            }
            if log_now {
                window.started = Instant::now(); // the next window starts after evaluation and checkpoint
            }
            if interrupted {
                writer.finish()?;
                // Every rank waits until rank 0's checkpoint is on disk, then all stop.
                collective.all_reduce_sum_f64(&mut [0.0])?;
                return Err(TrainError::Interrupted {
                    step: step_number,
                    checkpoint: checkpoint::step_dir(&run_dir, step_number).display().to_string(),
                });
            }
        }
        Ok(())
    })?;
    writer.finish()?;
    bar.finish_and_clear();

    let seconds = started.elapsed().as_secs_f64();
    let steps = max_steps.saturating_sub(start_step);
    Ok(TrainSummary {
        steps,
        seconds,
        samples_per_second: (steps * config.train.batch_size as u64) as f64 / seconds.max(1e-9),
        final_eval,
        best: best.map(|b| (b.step, b.auc)),
        last_checkpoint,
    })
}

/// Loads `model.safetensors` of a checkpoint into a freshly built model (eval, predict, embed).
pub fn load_checkpoint_into(vs: &tch::nn::VarStore, dir: &Path) -> Result<(), TrainError> {
    let ckpt = Checkpoint::open(dir)?;
    checkpoint::load_model(vs, &ckpt)
}

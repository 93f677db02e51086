//! The subcommands: thin wiring of mtrec-train's components.
use crate::ConfigArgs;
use anyhow::{Context, bail};
use mtrec_data::manifest::Split;
use mtrec_data::vectors::{write_news_vectors, write_user_vectors};
use mtrec_data::write::write_atomically;
use mtrec_dist::{Backend, Collective, Job, Local, Watchdog};
use mtrec_train::agree::agree_on_config;
use mtrec_train::beyond::TrainingClicks;
use mtrec_train::checkpoint::Checkpoint;
use mtrec_train::config::{Config, Dedup, DistBackend};
use mtrec_train::eval::{eval_impressions, evaluate, news_vectors, score_impressions, user_vectors};
use mtrec_train::metrics::ranks_in_input_order;
use mtrec_train::resume::open_chosen_checkpoint;
use mtrec_train::setup;
use mtrec_train::{Resume, Start, bench};
use std::io::Write;
use std::path::{Path, PathBuf};
use tch::Device;

fn load_config(args: &ConfigArgs) -> anyhow::Result<Config> {
    Ok(Config::load(&args.config, &args.overrides)?)
}

/// The watchdog of a command, from before it connects to its end (`dist.timeout_s`).
fn watch(config: &Config) -> Watchdog {
    Watchdog::start(std::time::Duration::from_secs(config.dist.timeout_s))
}

/// [`watch`], for a command whose ranks work together: a rank silent on the job's liveness link
/// for half of `dist.timeout_s` is lost too. Its heartbeat comes from a thread that waits on
/// nothing else, so the link names a silent host before the watchdog can only say that no
/// progress was made.
fn watch_job(job: &Job, config: &Config) -> Watchdog {
    job.set_peer_timeout(std::time::Duration::from_millis(config.dist.timeout_s * 500).max(MIN_PEER_TIMEOUT));
    watch(config)
}

/// The shortest peer timeout: a few missed heartbeats (one a second) are not a loss.
const MIN_PEER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// The collective for this job: NCCL when training on CUDA, else MPI (or a world of one).
fn connect<'a>(job: &'a Job, config: &Config) -> anyhow::Result<&'a dyn Collective> {
    // A CUDA device that is not there (no driver, no GPU, too few) is refused here, before NCCL.
    let placement = job.placement();
    let device = setup::device(config.train.device, placement.local_rank)?;
    if mtrec_dist::launched_by_mpi() {
        mtrec_dist::say(&format!(
            "rank {}/{} on {}: local rank {}/{}, device {device:?}, pid {}",
            placement.rank,
            placement.world_size,
            mtrec_dist::hostname(),
            placement.local_rank,
            placement.local_size,
            std::process::id()
        ));
    }
    let nccl_alone = config.dist.backend == DistBackend::Nccl;
    let backend = match device {
        Device::Cuda(_) => Backend::Cuda { nccl_alone },
        _ if nccl_alone => {
            bail!("dist.backend = \"nccl\" needs CUDA tensors, but this rank computes on {device:?}")
        }
        _ => Backend::Cpu,
    };
    job.collective(backend).context("connecting to the other ranks")
}

/// Runs every collective with known values ([`mtrec_dist::check_collectives`]); each rank
/// prints its results. Exit code 1 when one failed; `abort` ends the job through the failure
/// path after the checks.
pub fn check_collectives(job: &Job, args: &ConfigArgs, abort: bool) -> anyhow::Result<i32> {
    let config = load_config(args)?;
    let watchdog = watch_job(job, &config);
    watchdog.heartbeat().phase("connecting to the other ranks");
    let collective = connect(job, &config)?;
    let device = setup::device(config.train.device, collective.placement().local_rank)?;
    let checks = mtrec_dist::check_collectives(collective, device);
    let who = mtrec_dist::who();
    for check in &checks {
        let (verdict, detail) = match &check.outcome {
            Ok(how) => ("ok", how),
            Err(why) => ("FAILED", why),
        };
        let backend = collective.backend();
        mtrec_dist::say(&format!("{who}: {} {verdict} ({backend}, {device:?}): {detail}", check.name));
    }
    let failed = checks.iter().filter(|c| c.outcome.is_err()).count();
    if abort {
        bail!(
            "check-collectives --abort: {failed} of {} checks failed; ending the job through the failure path",
            checks.len()
        );
    }
    Ok(if failed == 0 { 0 } else { 1 })
}

/// Trains; the exit code is [`mtrec_train::EXIT_INTERRUPTED`] when a signal stopped the run.
pub fn train(job: &Job, args: &ConfigArgs, resume: Option<&str>, reschedule: bool) -> anyhow::Result<i32> {
    let config = load_config(args)?;
    let resume = match resume {
        None => Resume::No,
        Some("auto") => Resume::Auto,
        Some(dir) => Resume::From(PathBuf::from(dir)),
    };
    let watchdog = watch_job(job, &config);
    // The hosts rank 0 loses, for a launcher that restarts the job elsewhere (README, "Multi-node").
    let lost = config.train.run_dir.join("LOST_HOSTS");
    if job.placement().is_main() {
        let _ = std::fs::remove_file(&lost);
    }
    mtrec_dist::record_losses_in(lost);
    let heartbeat = watchdog.heartbeat();
    heartbeat.phase("connecting to the other ranks");
    let collective = connect(job, &config)?;
    let summary = mtrec_train::train(&config, &Start { resume, reschedule }, collective, &heartbeat)?;
    if collective.placement().is_main() {
        report(&config.train.run_dir, None)?;
    }
    if let Some(stop) = &summary.stopped {
        if collective.placement().is_main() {
            println!(
                "stopped at step {} ({}); checkpoint {}; continue with --resume auto",
                stop.step,
                stop.signal,
                stop.checkpoint.display()
            );
        }
        return Ok(mtrec_train::EXIT_INTERRUPTED);
    }
    if let (Some((step, count)), true) = (&summary.early_stop, collective.placement().is_main()) {
        println!("{}", count.describe(*step, &config.eval));
    }
    if collective.placement().is_main() {
        println!(
            "trained {} steps in {:.1} s ({:.2} samples/s) on {} rank(s); run dir {}",
            summary.steps,
            summary.seconds,
            summary.samples_per_second,
            collective.placement().world_size,
            config.train.run_dir.display()
        );
        if let Some(m) = summary.final_eval {
            print!("{}: {m}", config.eval.split);
        }
        if let Some(best) = summary.best {
            println!(
                "best checkpoint: step {} ({} {:.4}), see {}",
                best.step,
                best.metric,
                best.value,
                config.train.run_dir.join("best.json").display()
            );
        }
        if let Some(dir) = summary.last_checkpoint {
            println!("last checkpoint: {}", dir.display());
        }
    }
    Ok(0)
}

/// Writes the report of a run (default folder: `run_dir/report`); returns report.md's path.
pub fn report(run_dir: &Path, out: Option<&Path>) -> anyhow::Result<PathBuf> {
    let out = out.map_or_else(|| run_dir.join("report"), Path::to_path_buf);
    let summary = mtrec_report::write_report(run_dir, &out, &Config::default().to_toml())?;
    println!("report: {}", summary.report.display());
    Ok(summary.report)
}

pub fn compare(run_dirs: &[PathBuf], out: &Path) -> anyhow::Result<()> {
    print!("{}", mtrec_report::compare(run_dirs, out)?);
    println!("wrote {} and {}", out.join("compare.md").display(), out.join("dev_auc.png").display());
    Ok(())
}

/// The resolved config, or one field of it (`--get section.key`; strings bare).
pub fn show_config(args: &ConfigArgs, get: Option<&str>) -> anyhow::Result<()> {
    let config = load_config(args)?;
    match get {
        None => print!("{}", config.to_toml()),
        Some(key) => println!("{}", config.field(key)?),
    }
    Ok(())
}

pub fn eval(job: &Job, args: &ConfigArgs, checkpoint: &Path) -> anyhow::Result<()> {
    let config = load_config(args)?;
    let watchdog = watch_job(job, &config);
    let heartbeat = watchdog.heartbeat();
    heartbeat.phase("connecting to the other ranks");
    let collective = connect(job, &config)?;
    agree_on_config(&config, collective)?;
    let placement = collective.placement();
    let device = setup::device(config.train.device, placement.local_rank)?;
    heartbeat.phase("loading the shards");
    let loaded = setup::load(&config, collective)?;
    heartbeat.phase("loading the checkpoint");
    // Rank 0 verifies it; every rank proves it reads the same one.
    let verified = if placement.is_main() { Some(Checkpoint::open(checkpoint)?) } else { None };
    let checkpoint = open_chosen_checkpoint(verified, collective)?.expect("rank 0 opened one");
    let (_vs, model) = setup::trained_model(&config, &loaded, Some(&checkpoint), device)?;
    let checkpoint = checkpoint.dir.as_path();
    let impressions = eval_impressions(&config, &loaded.manifest)?;
    let tick = || {
        heartbeat.beat();
        Ok(())
    };
    heartbeat.phase("counting the training clicks");
    let train = mtrec_data::read::read_train(&config.data.shards, &loaded.manifest)?;
    let clicks = TrainingClicks::count(&train, loaded.news.len());
    drop(train);
    heartbeat.phase("evaluation");
    let evaluation =
        evaluate(&model, &loaded.news, &impressions, &clicks, &config, device, collective, &tick, None)?;
    if placement.is_main() {
        print!("{}: {evaluation}", config.eval.split);
        let path = checkpoint.join("metrics.json");
        let mut json = evaluation.to_json();
        json["split"] = serde_json::json!(config.eval.split);
        std::fs::write(&path, serde_json::to_string_pretty(&json)?)
            .with_context(|| path.display().to_string())?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// `ImpressionID [r1,r2,...]` lines in input order, zipped as `prediction.txt`.
pub fn predict(args: &ConfigArgs, checkpoint: &Path, split: Split, out: &Path) -> anyhow::Result<()> {
    let config = load_config(args)?;
    let watchdog = watch(&config);
    let heartbeat = watchdog.heartbeat();
    let tick = || {
        heartbeat.beat();
        Ok(())
    };
    let device = setup::device(config.train.device, 0)?;
    let loaded = setup::load(&config, &Local)?;
    let (_vs, model) = setup::trained_model(&config, &loaded, Some(&Checkpoint::open(checkpoint)?), device)?;
    let impressions = mtrec_data::read::read_eval(&config.data.shards, &loaded.manifest, split)?;
    heartbeat.phase("prediction");
    let news_vectors = news_vectors(&model, &loaded.news, config.eval.news_batch, device, &tick)?;
    let (history, batch) = (config.data.history, config.eval.user_batch);
    let rounds = impressions.len().div_ceil(batch.max(1));
    let scores = score_impressions(&model, &news_vectors, &impressions, history, batch, rounds, true, &tick)?;
    write_prediction_zip(
        out,
        impressions.iter().map(|i| i.impression_id).zip(scores.iter().map(|s| s.as_slice())),
    )?;
    println!("wrote {} ({} impressions)", out.display(), impressions.len());
    Ok(())
}

/// Writes `prediction.zip` whole or not at all ([`write_atomically`]).
pub fn write_prediction_zip<'a>(
    out: &Path,
    rows: impl Iterator<Item = (i64, &'a [f32])>,
) -> anyhow::Result<()> {
    write_atomically(out, |tmp| -> anyhow::Result<()> {
        let mut zip = zip::ZipWriter::new(std::fs::File::create(tmp)?);
        zip.start_file("prediction.txt", zip::write::SimpleFileOptions::default())?;
        for (id, scores) in rows {
            let ranks: Vec<String> =
                ranks_in_input_order(id, scores)?.iter().map(|r| r.to_string()).collect();
            writeln!(zip, "{id} [{}]", ranks.join(","))?;
        }
        zip.finish()?.sync_all()?;
        Ok(())
    })
    .with_context(|| format!("writing {}", out.display()))
}

/// What `embed` writes: one vector per news item, or with `users` one user vector per
/// impression of `split`.
#[derive(Debug)]
pub struct EmbedOptions {
    pub model: Option<PathBuf>,
    pub shards: Option<PathBuf>,
    pub checkpoint: Option<PathBuf>,
    pub config: Option<PathBuf>,
    pub overrides: Vec<String>,
    pub users: Option<Split>,
    pub out: PathBuf,
}

/// Writes news vectors (`news_id`, `vector`), or user vectors (`impression_id`, `vector`), to
/// Parquet, stamped with the checkpoint they come from ([`mtrec_data::vectors::VectorSource`]).
pub fn embed(options: EmbedOptions) -> anyhow::Result<()> {
    let mut config = match &options.config {
        Some(path) => Config::load(path, &options.overrides)?,
        None => Config::parse("", &options.overrides)?,
    };
    if let Some(model) = options.model {
        config.model.path = model;
    }
    if let Some(shards) = options.shards {
        config.data.shards = shards;
    }
    let device = setup::device(config.train.device, 0)?;
    let loaded = setup::load(&config, &Local)?;
    let checkpoint = options.checkpoint.as_deref().map(Checkpoint::open).transpose()?;
    let (_vs, model) = setup::trained_model(&config, &loaded, checkpoint.as_ref(), device)?;
    let source = checkpoint.as_ref().map(|c| setup::vector_source(&config, c));
    let news_vectors = news_vectors(&model, &loaded.news, config.eval.news_batch, device, &|| Ok(()))?;
    let host = |t: &tch::Tensor| -> anyhow::Result<Vec<f32>> {
        Ok(Vec::try_from(t.to_device(Device::Cpu).to_kind(tch::Kind::Float).view([-1]))?)
    };
    let dim = news_vectors.size()[1] as usize;
    let out = &options.out;
    match options.users {
        None => {
            let values = host(&news_vectors)?;
            let rows = (1..loaded.news.news_id.len())
                .map(|nid| (loaded.news.news_id[nid].as_str(), &values[nid * dim..(nid + 1) * dim]));
            let written = write_news_vectors(out, dim, source.as_ref(), rows)?;
            println!("wrote {} ({written} news, {dim}-d vectors)", out.display());
        }
        Some(split) => {
            let impressions = mtrec_data::read::read_eval(&config.data.shards, &loaded.manifest, split)?;
            let (history, batch) = (config.data.history, config.eval.user_batch);
            let values = host(&user_vectors(&model, &news_vectors, &impressions, history, batch)?)?;
            let rows = impressions
                .iter()
                .enumerate()
                .map(|(i, imp)| (imp.impression_id, &values[i * dim..(i + 1) * dim]));
            let written = write_user_vectors(out, dim, source.as_ref(), rows)?;
            println!(
                "wrote {} ({written} impressions of {}, {dim}-d user vectors)",
                out.display(),
                split.name()
            );
        }
    }
    Ok(())
}

/// What `bench` times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// The fixed reference batch of DESIGN.md, in one process.
    Reference,
    /// Real batches of the config's shards, on every rank.
    Mind,
}

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub workload: Workload,
    /// `mind`: samples per rank and step, one variant each.
    pub batch_per_rank: Vec<usize>,
    /// `mind`: `NAME SECTION.KEY=VALUE ...` each; default per-rank and global de-duplication.
    pub variants: Vec<String>,
    pub warmup: usize,
    pub steps: usize,
    pub json: bool,
}

pub fn bench(job: &Job, args: &ConfigArgs, options: &BenchOptions) -> anyhow::Result<()> {
    let config = load_config(args)?;
    match options.workload {
        Workload::Reference if job.placement().world_size > 1 => {
            bail!("bench --workload reference runs in one process; under mpirun use --workload mind")
        }
        Workload::Reference => bench_reference(&config, options),
        Workload::Mind => bench_mind(job, args, &config, options),
    }
}

fn phases_json(p: &mtrec_train::step::PhaseTimes) -> serde_json::Value {
    let names = mtrec_train::step::PhaseTimes::NAMES.iter().map(|name| name.to_string());
    serde_json::Value::Object(names.zip(p.seconds().map(serde_json::Value::from)).collect())
}

fn bench_reference(config: &Config, options: &BenchOptions) -> anyhow::Result<()> {
    let (warmup, steps) = (options.warmup, options.steps);
    let mut main_only = config.clone();
    main_only.mtl.category = false;
    main_only.mtl.ner = false;
    let model_dir = setup::model_dir(config)?;
    let results = bench::run_reference(&[config.clone(), main_only], warmup, steps)?;
    let [full, base] = <[bench::BenchResult; 2]>::try_from(results).expect("one result per config");
    let surgery_name = format!("{:?} surgery", config.mtl.surgery).to_lowercase();
    // Model FLOPs of the rows each pass computes (`bench::step_flops`); MFU for bf16 on CUDA.
    let device = setup::device(config.train.device, 0)?;
    let mfu =
        |r: &bench::BenchResult| bench::mfu(r.flops_per_second(), config.train.precision, device.is_cuda());
    if options.json {
        let variant = |name: &str, r: &bench::BenchResult| {
            serde_json::json!({
                "name": name,
                "samples_per_s": r.samples_per_second(),
                "tokens_per_s": r.tokens / r.mean().as_secs_f64(),
                "step_s": r.mean().as_secs_f64(),
                "step_s_median": r.median().as_secs_f64(),
                "phases": phases_json(&r.phases),
                "gflop_per_step": r.flops / 1e9,
                "gflop_per_s": r.flops_per_second() / 1e9,
                "mfu": mfu(r),
                "gpu_memory_peak_bytes": r.gpu_memory_peak,
            })
        };
        let out = serde_json::json!({
            "workload": "reference",
            "model": model_dir,
            "threads": tch::get_num_threads(),
            "samples": config.train.batch_size,
            "titles": full.titles,
            "tokens": full.tokens,
            "warmup": warmup,
            "steps": steps,
            "device": format!("{device:?}"),
            "gpu": gpu_name(device),
            "mfu_peak": {"name": bench::PEAK_NAME, "tflop_per_s": bench::PEAK_BF16_TFLOPS},
            "variants": [variant(&surgery_name, &full), variant("main task only", &base)],
        });
        println!("{out}");
        return Ok(());
    }
    println!(
        "reference workload: {} samples/step (train.batch_size), history {}, 1+{} candidates, model {}, {} threads",
        config.train.batch_size,
        bench::HISTORY,
        bench::NEGATIVES,
        model_dir.display(),
        tch::get_num_threads()
    );
    println!(
        "{} titles, {} tokens per step; mean over {steps} steps after {warmup} warm-up, the two \
         steps taking turns",
        full.titles, full.tokens
    );
    println!(
        "| step | samples/s | step s | median s | fastest-slowest s | forward | backward main | backward aux | \
         surgery | optimizer |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (name, r) in [(surgery_name.clone(), &full), ("main task only".into(), &base)] {
        let (p, (fastest, slowest)) = (r.phases, r.range());
        println!(
            "| {name} | {:.2} | {:.3} | {:.3} | {:.2}-{:.2} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} |",
            r.samples_per_second(),
            r.mean().as_secs_f64(),
            r.median().as_secs_f64(),
            fastest.as_secs_f64(),
            slowest.as_secs_f64(),
            p.forward.as_secs_f64(),
            p.backward_main.as_secs_f64(),
            p.backward_aux.as_secs_f64(),
            p.surgery.as_secs_f64(),
            p.optimizer.as_secs_f64()
        );
    }
    // Each measured multi-task step against the main-only step that ran right after it.
    let pairs: Vec<f64> =
        full.steps.iter().zip(&base.steps).map(|(a, b)| a.as_secs_f64() / b.as_secs_f64()).collect();
    println!(
        "surgery step / main-only step: {:.2}x on the means, {:.2}x on the medians, {:.2}-{:.2}x step \
         by step",
        full.mean().as_secs_f64() / base.mean().as_secs_f64(),
        full.median().as_secs_f64() / base.median().as_secs_f64(),
        pairs.iter().copied().fold(f64::INFINITY, f64::min),
        pairs.iter().copied().fold(0.0, f64::max)
    );
    for (name, r) in [("multi-task step", &full), ("main-only step", &base)] {
        let mfu = mfu(r).map_or(String::new(), |m| {
            format!(
                ", MFU {:.1}% of {} TFLOP/s bf16 dense ({} peak)",
                100.0 * m,
                bench::PEAK_BF16_TFLOPS,
                bench::PEAK_NAME
            )
        });
        println!(
            "{name}: {:.1} GFLOP per step, {:.1} GFLOP/s{mfu}",
            r.flops / 1e9,
            r.flops_per_second() / 1e9
        );
    }
    if let Device::Cuda(_) = device {
        println!(
            "samples/s, GFLOP/s and MFU from {steps} steps synchronised once each, at its end; the phases \
             from {steps} more, synchronised between phases"
        );
        for (name, r) in [("multi-task step", &full), ("main-only step", &base)] {
            println!("{name}: {}", gpu_memory_line(device, r.gpu_memory_peak));
        }
    }
    Ok(())
}

/// The name of `device` when it is a GPU the driver names.
fn gpu_name(device: Device) -> Option<String> {
    match device {
        Device::Cuda(gpu) => mtrec_dist::gpu::name(gpu).ok(),
        _ => None,
    }
}

/// `peak GPU memory in use 12.34 GB of 150.02 GB (NVIDIA H200), as the driver counts it ...`
fn gpu_memory_line(device: Device, peak: Option<usize>) -> String {
    let Device::Cuda(gpu) = device else {
        return String::new();
    };
    let gpu_label = gpu_name(device).unwrap_or_else(|| format!("GPU {gpu}"));
    match (peak, mtrec_dist::gpu::memory(gpu)) {
        (Some(peak), Ok(memory)) => format!(
            "peak GPU memory in use {:.2} GB of {:.2} GB ({gpu_label}), as the driver counts it after each \
             step: torch's reserved pool, the CUDA context and any other process",
            peak as f64 / 1e9,
            memory.total as f64 / 1e9
        ),
        (_, Err(e)) => format!("peak GPU memory: not recorded ({e})"),
        (None, Ok(_)) => "peak GPU memory: not recorded".to_string(),
    }
}

/// World sizes whose de-duplication `bench --workload mind` counts on the host.
const DEDUP_WORLDS: [usize; 4] = [1, 2, 4, 8];
/// Global batches that count covers.
const DEDUP_STEPS: u64 = 20;

/// One rank's figures of one variant: its mean and median step time, and per step its title
/// slots, titles encoded, tokens and phase times.
struct RankFigures {
    step_s: f64,
    step_s_median: f64,
    title_slots: f64,
    titles: f64,
    tokens: f64,
    phases: mtrec_train::step::PhaseTimes,
}

/// Values of [`RankFigures`] as the ranks move them.
const FIGURES: usize = 11;

impl RankFigures {
    fn of(r: &bench::BenchResult) -> RankFigures {
        RankFigures {
            step_s: r.mean().as_secs_f64(),
            step_s_median: r.median().as_secs_f64(),
            title_slots: r.slots,
            titles: r.titles,
            tokens: r.tokens,
            phases: r.phases,
        }
    }

    fn to_values(&self) -> [f64; FIGURES] {
        let mut values = [0.0; FIGURES];
        values[..5].copy_from_slice(&[
            self.step_s,
            self.step_s_median,
            self.title_slots,
            self.titles,
            self.tokens,
        ]);
        values[5..].copy_from_slice(&self.phases.seconds());
        values
    }

    fn from_values(v: &[f64]) -> RankFigures {
        RankFigures {
            step_s: v[0],
            step_s_median: v[1],
            title_slots: v[2],
            titles: v[3],
            tokens: v[4],
            phases: mtrec_train::step::PhaseTimes::from_seconds(v[5..].try_into().expect("six phases")),
        }
    }
}

/// Every rank's figures of `r`, on every rank (a sum over ranks of vectors that hold each rank's
/// own figures at its offset).
fn rank_figures(collective: &dyn Collective, r: &bench::BenchResult) -> anyhow::Result<Vec<RankFigures>> {
    let p = collective.placement();
    let mut all = vec![0.0; FIGURES * p.world_size];
    all[FIGURES * p.rank..FIGURES * (p.rank + 1)].copy_from_slice(&RankFigures::of(r).to_values());
    collective.all_reduce_sum_f64(&mut all)?;
    Ok(all.chunks(FIGURES).map(RankFigures::from_values).collect())
}

/// `NAME SECTION.KEY=VALUE ...`: a bench variant's name and its `--set`s.
fn parse_variant(text: &str) -> anyhow::Result<(String, Vec<String>)> {
    let mut words = text.split_whitespace();
    let name = words.next().with_context(|| format!("--variant `{text}`: no name"))?;
    Ok((name.to_string(), words.map(str::to_string).collect()))
}

fn bench_mind(job: &Job, args: &ConfigArgs, config: &Config, options: &BenchOptions) -> anyhow::Result<()> {
    let collective = connect(job, config)?;
    let placement = collective.placement();
    let world = placement.world_size;
    agree_on_config(config, collective)?;
    if options.batch_per_rank.contains(&0) {
        bail!("--batch-per-rank: every batch needs at least one sample per rank");
    }
    // The named variants, or per-rank and global de-duplication (only per-rank in one process).
    let named: Vec<(String, Vec<String>)> = if !options.variants.is_empty() {
        options.variants.iter().map(|v| parse_variant(v)).collect::<anyhow::Result<_>>()?
    } else if world > 1 {
        ["rank", "global"].map(|d| (d.to_string(), vec![format!("data.dedup={d}")])).to_vec()
    } else {
        vec![("rank".to_string(), vec!["data.dedup=rank".to_string()])]
    };
    let mut variants = Vec::new();
    for &per_rank in &options.batch_per_rank {
        for (name, sets) in &named {
            let overrides: Vec<String> = args.overrides.iter().chain(sets).cloned().collect();
            let mut variant =
                Config::load(&args.config, &overrides).with_context(|| format!("bench variant `{name}`"))?;
            variant.train.batch_size = per_rank * world;
            variant.validate_for_world(world).with_context(|| format!("bench variant `{name}`"))?;
            variants.push((per_rank, name.clone(), variant));
        }
    }
    let data = bench::MindData::load(config, collective)?;
    let configs: Vec<Config> = variants.iter().map(|(_, _, c)| c.clone()).collect();
    let results = bench::run_mind(&configs, &data, collective, options.warmup, options.steps)?;
    let figures: Vec<Vec<RankFigures>> =
        results.iter().map(|r| rank_figures(collective, r)).collect::<anyhow::Result<_>>()?;
    if !placement.is_main() {
        return Ok(());
    }
    let sampler = data.sampler(config);
    let dedup_counts: Vec<(usize, usize, (u64, mtrec_data::batch::DedupCounts))> = options
        .batch_per_rank
        .iter()
        .flat_map(|&b| DEDUP_WORLDS.iter().map(move |&w| (b, w)))
        .map(|(b, w)| (b, w, bench::dedup_counts(&sampler, b, w, DEDUP_STEPS)))
        .collect();
    let dedup_name = |d: Dedup| if d == Dedup::Global { "global" } else { "rank" };
    let effective_dedup = |c: &Config| dedup_name(if world > 1 { c.data.dedup } else { Dedup::Rank });
    // Global throughput: every rank's step ends with the same collectives, so the slowest rank's
    // mean step time is the job's.
    let global = |f: &[RankFigures]| {
        let step = f.iter().map(|r| r.step_s).fold(0.0, f64::max).max(1e-9);
        let sum = |value: fn(&RankFigures) -> f64| f.iter().map(value).sum::<f64>();
        (step, sum(|r| r.titles), sum(|r| r.tokens), sum(|r| r.title_slots))
    };
    if options.json {
        let variants_json: Vec<serde_json::Value> = variants
            .iter()
            .zip(&figures)
            .zip(&results)
            .map(|(((per_rank, name, variant), f), result)| {
                let (step, titles, tokens, slots) = global(f);
                let ranks: Vec<serde_json::Value> = f
                    .iter()
                    .enumerate()
                    .map(|(rank, r)| {
                        serde_json::json!({
                            "rank": rank, "step_s": r.step_s, "step_s_median": r.step_s_median,
                            "title_slots": r.title_slots, "titles": r.titles, "tokens": r.tokens,
                            "samples_per_s": *per_rank as f64 / r.step_s, "phases": phases_json(&r.phases),
                        })
                    })
                    .collect();
                serde_json::json!({
                    "batch_per_rank": per_rank, "global_batch": variant.train.batch_size,
                    "variant": name, "dedup": effective_dedup(variant),
                    "trainable_layers": variant.model.trainable_layers, "layer_cache": variant.model.layer_cache,
                    "vector_cache": variant.data.vector_cache, "cache_hit_rate": result.cache_hit_rate,
                    "gpu_memory_peak_bytes": result.gpu_memory_peak, // rank 0's
                    "step_s": step,
                    "samples_per_s": variant.train.batch_size as f64 / step, "tokens_per_s": tokens / step,
                    "title_slots": slots, "titles": titles, "tokens": tokens, "ranks": ranks,
                })
            })
            .collect();
        let counts_json: Vec<serde_json::Value> = dedup_counts
            .iter()
            .map(|(b, w, (n, c))| {
                serde_json::json!({"batch_per_rank": b, "world": w, "global_batches": n,
                    "title_slots": c.slots, "per_rank_unique": c.per_rank, "global_unique": c.global})
            })
            .collect();
        let out = serde_json::json!({
            "workload": "mind", "shards": config.data.shards, "world": world, "backend": collective.backend(),
            "threads": tch::get_num_threads(), "model": data.loaded.model_dir,
            "history": config.data.history, "negatives": config.data.negatives,
            "surgery": format!("{:?}", config.mtl.surgery).to_lowercase(),
            "warmup": options.warmup, "steps": options.steps,
            "variants": variants_json, "dedup_counts": counts_json,
        });
        println!("{out}");
        return Ok(());
    }
    println!(
        "mind workload: {} ({} training samples), history {}, 1+{} candidates, model {}, {world} rank(s) \
         over {}, {} threads each; mean over {} steps after {} warm-up, the variants taking turns",
        config.data.shards.display(),
        sampler.index().len(),
        config.data.history,
        config.data.negatives,
        data.loaded.model_dir.display(),
        collective.backend(),
        tch::get_num_threads(),
        options.steps,
        options.warmup
    );
    println!(
        "| samples/rank | variant | rank | title slots | titles encoded | tokens | forward | exchange | \
         backward main | backward aux | surgery | optimizer | step s | samples/s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for ((per_rank, name, _), f) in variants.iter().zip(&figures) {
        for (rank, r) in f.iter().enumerate() {
            let phases: Vec<String> = r.phases.seconds().iter().map(|s| format!("{s:.3}")).collect();
            println!(
                "| {per_rank} | {name} | {rank} | {:.0} | {:.0} | {:.0} | {} | {:.3} | {:.2} |",
                r.title_slots,
                r.titles,
                r.tokens,
                phases.join(" | "),
                r.step_s,
                *per_rank as f64 / r.step_s
            );
        }
    }
    println!(
        "\n| samples/rank | global batch | variant | titles encoded (all ranks) | of title slots | samples/s | tokens/s \
         | vector-cache hits |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (((per_rank, name, variant), f), result) in variants.iter().zip(&figures).zip(&results) {
        let (step, titles, tokens, slots) = global(f);
        println!(
            "| {per_rank} | {} | {} | {titles:.0} | {:.2} | {:.2} | {:.0} | {} |",
            variant.train.batch_size,
            name,
            titles / slots.max(1.0),
            variant.train.batch_size as f64 / step,
            tokens / step,
            result.cache_hit_rate.map_or("-".to_string(), |h| format!("{:.1}%", 100.0 * h))
        );
    }
    let device = setup::device(config.train.device, placement.local_rank)?;
    if device.is_cuda() {
        println!();
        for ((per_rank, name, _), result) in variants.iter().zip(&results) {
            println!("{per_rank} {name}, rank 0: {}", gpu_memory_line(device, result.gpu_memory_peak));
        }
    }
    println!(
        "\nde-duplication of the first {DEDUP_STEPS} global batches of epoch 0 (fewer where the epoch has \
         fewer), counted on the host (no model runs, so any world size):"
    );
    println!(
        "| samples/rank | world | batches | title slots/step | per-rank unique / slots | global unique / slots \
         | global / per-rank |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (b, w, (n, c)) in &dedup_counts {
        let slots = c.slots.max(1) as f64;
        println!(
            "| {b} | {w} | {n} | {:.0} | {:.3} | {:.3} | {:.3} |",
            slots / (*n).max(1) as f64,
            c.per_rank as f64 / slots,
            c.global as f64 / slots,
            c.global as f64 / c.per_rank.max(1) as f64
        );
    }
    Ok(())
}

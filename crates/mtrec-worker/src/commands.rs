//! The subcommands: thin wiring of mtrec-train's components.
use crate::ConfigArgs;
use anyhow::{Context, bail};
use mtrec_data::manifest::Split;
use mtrec_data::write::write_atomically;
use mtrec_dist::{Backend, Collective, Job, Local, Watchdog};
use mtrec_train::agree::agree_on_config;
use mtrec_train::checkpoint::Checkpoint;
use mtrec_train::config::Config;
use mtrec_train::eval::{category_accuracy, encode_all_news, eval_impressions, evaluate, score_impressions};
use mtrec_train::metrics::ranks_in_input_order;
use mtrec_train::setup::{self, LabelCounts};
use mtrec_train::train::open_chosen_checkpoint;
use mtrec_train::{Resume, Start, bench};
use std::io::Write;
use std::path::{Path, PathBuf};

fn load_config(args: &ConfigArgs) -> anyhow::Result<Config> {
    Ok(Config::load(&args.config, &args.overrides)?)
}

/// The watchdog of a command, from before it connects to its end (`dist.timeout_s`).
fn watch(config: &Config) -> Watchdog {
    Watchdog::start(std::time::Duration::from_secs(config.dist.timeout_s))
}

/// The collective for this job: NCCL when training on CUDA, else MPI (or a world of one).
fn connect<'a>(job: &'a Job, config: &Config) -> anyhow::Result<&'a dyn Collective> {
    // A CUDA device that is not there (no driver, no GPU, too few) is refused here, before NCCL.
    let cuda = setup::device(config.train.device, job.placement().local_rank)?.is_cuda();
    let backend = if cuda { Backend::Cuda } else { Backend::Cpu };
    job.collective(backend).context("connecting to the other ranks")
}

/// Trains; the exit code is [`mtrec_train::EXIT_INTERRUPTED`] when a signal stopped the run.
pub fn train(job: &Job, args: &ConfigArgs, resume: Option<&str>, reschedule: bool) -> anyhow::Result<i32> {
    let config = load_config(args)?;
    let resume = match resume {
        None => Resume::No,
        Some("auto") => Resume::Auto,
        Some(dir) => Resume::From(PathBuf::from(dir)),
    };
    let watchdog = watch(&config);
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
            println!("{}: {m}", config.eval.split);
        }
        if let Some((step, auc)) = summary.best {
            println!(
                "best checkpoint: step {step} (AUC {auc:.4}), see {}",
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

/// A model built per `config` with the checkpoint's weights.
fn model_from_checkpoint(
    config: &Config,
    loaded: &setup::Loaded,
    checkpoint: Option<&Checkpoint>,
    device: tch::Device,
) -> anyhow::Result<(tch::nn::VarStore, mtrec_model::NewsRecModel)> {
    let entity_table = setup::entity_table(config, &config.data.shards)?;
    let (vs, model) = setup::build_model(
        config,
        LabelCounts::of(&loaded.manifest),
        &loaded.model_dir,
        entity_table,
        device,
    )?;
    if let Some(checkpoint) = checkpoint {
        mtrec_train::checkpoint::load_model(&vs, checkpoint)?;
    }
    Ok((vs, model))
}

pub fn eval(job: &Job, args: &ConfigArgs, checkpoint: &Path) -> anyhow::Result<()> {
    let config = load_config(args)?;
    let watchdog = watch(&config);
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
    let (_vs, model) = model_from_checkpoint(&config, &loaded, Some(&checkpoint), device)?;
    let checkpoint = checkpoint.dir.as_path();
    let impressions = eval_impressions(&config, &loaded.manifest)?;
    heartbeat.phase("evaluation");
    let tick = || {
        heartbeat.beat();
        Ok(())
    };
    let metrics = evaluate(&model, &loaded.news, &impressions, &config, device, collective, &tick)?;
    if placement.is_main() {
        println!("{}: {metrics}", config.eval.split);
        heartbeat.phase("category accuracy");
        let beat = || heartbeat.beat();
        let category =
            category_accuracy(&model, &loaded.news, &impressions, config.eval.news_batch, device, &beat);
        if let Some((accuracy, majority)) = category {
            println!(
                "{}: category head accuracy {accuracy:.4} (majority class {majority:.4})",
                config.eval.split
            );
        }
        let path = checkpoint.join("metrics.json");
        let json = serde_json::json!({"split": config.eval.split, "auc": metrics.auc, "mrr": metrics.mrr,
            "ndcg5": metrics.ndcg5, "ndcg10": metrics.ndcg10, "impressions": metrics.impressions,
            "category_accuracy": category.map(|c| c.0), "category_majority": category.map(|c| c.1)});
        std::fs::write(&path, serde_json::to_string_pretty(&json)?)
            .with_context(|| path.display().to_string())?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// `ImpressionID [r1,r2,...]` lines in input order, zipped as `prediction.txt`.
pub fn predict(args: &ConfigArgs, checkpoint: &Path, split: &str, out: &Path) -> anyhow::Result<()> {
    let config = load_config(args)?;
    let split = match split {
        "dev" => Split::Dev,
        "test" => Split::Test,
        other => bail!("--split {other:?}: expected dev or test"),
    };
    let watchdog = watch(&config);
    let heartbeat = watchdog.heartbeat();
    let tick = || {
        heartbeat.beat();
        Ok(())
    };
    let device = setup::device(config.train.device, 0)?;
    let loaded = setup::load(&config, &Local)?;
    let (_vs, model) = model_from_checkpoint(&config, &loaded, Some(&Checkpoint::open(checkpoint)?), device)?;
    let impressions = mtrec_data::read::read_eval(&config.data.shards, &loaded.manifest, split)?;
    heartbeat.phase("prediction");
    let news_vectors = encode_all_news(&model, &loaded.news, config.eval.news_batch, device, &Local, &tick)?;
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

pub fn embed(
    model: Option<PathBuf>,
    shards: Option<PathBuf>,
    checkpoint: Option<&Path>,
    config_path: Option<&Path>,
    overrides: &[String],
    out: &Path,
) -> anyhow::Result<()> {
    let mut config = match config_path {
        Some(path) => Config::load(path, overrides)?,
        None => Config::parse("", overrides)?,
    };
    if let Some(model) = model {
        config.model.path = model;
    }
    if let Some(shards) = shards {
        config.data.shards = shards;
    }
    let device = setup::device(config.train.device, 0)?;
    let loaded = setup::load(&config, &Local)?;
    let checkpoint = checkpoint.map(Checkpoint::open).transpose()?;
    let (_vs, model) = model_from_checkpoint(&config, &loaded, checkpoint.as_ref(), device)?;
    let vectors = encode_all_news(&model, &loaded.news, config.eval.news_batch, device, &Local, &|| Ok(()))?;
    let dim = vectors.size()[1] as usize;
    let values: Vec<f32> =
        Vec::try_from(vectors.to_device(tch::Device::Cpu).to_kind(tch::Kind::Float).view([-1]))?;
    let rows = (1..loaded.news.news_id.len())
        .map(|nid| (loaded.news.news_id[nid].as_str(), &values[nid * dim..(nid + 1) * dim]));
    let written = mtrec_data::write::write_embeddings(out, dim, rows)?;
    println!("wrote {} ({written} news, {dim}-d vectors)", out.display());
    Ok(())
}

/// Dense bf16 peak of an H100/H200 SXM GPU (NVIDIA data sheet), the denominator of MFU.
const PEAK_BF16_TFLOPS: f64 = 989.4;

pub fn bench(args: &ConfigArgs, warmup: usize, steps: usize) -> anyhow::Result<()> {
    let config = load_config(args)?;
    let mut main_only = config.clone();
    main_only.mtl.category = false;
    main_only.mtl.ner = false;
    println!(
        "reference workload: {} samples/step, history {}, 1+{} candidates, model {}, {} threads",
        bench::SAMPLES,
        bench::HISTORY,
        bench::NEGATIVES,
        setup::model_dir(&config)?.display(),
        tch::get_num_threads()
    );
    let results = bench::run(&[config.clone(), main_only], warmup, steps)?;
    let [full, base] = <[bench::BenchResult; 2]>::try_from(results).expect("one result per config");
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
    for (name, r) in [
        (format!("{:?} surgery", config.mtl.surgery).to_lowercase(), &full),
        ("main task only".into(), &base),
    ] {
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
    // Model FLOPs: a forward pass costs 2 FLOPs per encoder weight per token plus attention
    // (4 L d FLOPs per token and layer for scores and values over a title of L tokens); a
    // backward pass twice a forward. The multi-task step runs one forward and two backward
    // passes (5 forward-equivalents), the main-task-only step one and one (3).
    let bert = setup::bert_config(&config, &setup::model_dir(&config)?)?;
    let (layers, d, ff) =
        (bert.num_hidden_layers as f64, bert.hidden_size as f64, bert.intermediate_size as f64);
    let mean_len = full.tokens as f64 / full.titles as f64;
    let forward = full.tokens as f64 * layers * (2.0 * (4.0 * d * d + 2.0 * d * ff) + 4.0 * mean_len * d);
    for (name, r, passes) in [("multi-task step", &full, 5.0), ("main-only step", &base, 3.0)] {
        let flops = passes * forward / r.mean().as_secs_f64();
        let mfu = match setup::device(config.train.device, 0)? {
            tch::Device::Cuda(_) => format!(
                ", MFU {:.1}% of {PEAK_BF16_TFLOPS} TFLOP/s bf16 dense",
                100.0 * flops / (PEAK_BF16_TFLOPS * 1e12)
            ),
            _ => String::new(),
        };
        println!("{name}: {:.1} GFLOP per step, {:.1} GFLOP/s{mfu}", passes * forward / 1e9, flops / 1e9);
    }
    Ok(())
}

//! `mtrec-worker`: one process per GPU (or CPU rank) of an mtrec job.
//!
//! `train`, `eval`, `predict` (the MIND leaderboard file), `embed` (news vectors to Parquet),
//! `bench` (step time on the reference or a MIND-like workload), `report` (figures and a summary of a run),
//! `compare` (runs side by side with the paper's Table 1), `serve` (the HTTP ranking service),
//! `config` (the resolved config),
//! `doctor` (what this binary found) and `check-collectives` (every collective with known values).
//!
//! One failure path for every command and phase ([`fail`]): an error or a panic on any rank is
//! printed by that rank at once, with its rank, and the rank then ends the whole job
//! ([`mtrec_dist::abort_job`]: NCCL abort, `MPI_Abort`, `_exit`). Only a command that succeeded
//! drops the [`Job`] (and so finalises MPI).

mod commands;
mod doctor;

use clap::{Parser, Subcommand};
use mtrec_data::manifest::Split;
use mtrec_dist::Job;
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "mtrec-worker", version, about = "Train, evaluate and serve MTRec news recommenders")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Options every config-driven command shares.
#[derive(clap::Args, Debug)]
pub struct ConfigArgs {
    /// Run config (TOML); see configs/.
    #[arg(long)]
    pub config: PathBuf,
    /// Override any config field: `--set train.max_steps=100 --set mtl.surgery=pcgrad`.
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    pub overrides: Vec<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Train per the config; `--resume auto` continues from the newest checkpoint of the run dir.
    Train {
        #[command(flatten)]
        config: ConfigArgs,
        /// `auto` or a checkpoint folder.
        #[arg(long)]
        resume: Option<String>,
        /// On resume, switch to this run's learning-rate schedule (`train.max_steps`,
        /// `optim.warmup_steps`) when it differs from the checkpoint's (refused otherwise).
        #[arg(long, requires = "resume")]
        reschedule: bool,
    },
    /// Evaluate a checkpoint on the config's eval split: prints AUC, MRR, nDCG@5/10, writes metrics.json.
    Eval {
        #[command(flatten)]
        config: ConfigArgs,
        #[arg(long)]
        checkpoint: PathBuf,
    },
    /// Write the MIND leaderboard file (prediction.txt zipped) for a split.
    Predict {
        #[command(flatten)]
        config: ConfigArgs,
        #[arg(long)]
        checkpoint: PathBuf,
        #[arg(long, default_value = "test", value_parser = parse_split)]
        split: Split,
        #[arg(long, default_value = "prediction.zip")]
        out: PathBuf,
    },
    /// Write the news vector of every news item of the shards to Parquet (news_id, vector), or
    /// with `--users --split S` the user vector of every impression of split S (impression_id,
    /// vector); stamped with the checkpoint, so `serve --news` can check it.
    Embed {
        /// Hugging Face model folder (default: the config's model.path, else the venv's MiniLM).
        #[arg(long)]
        model: Option<PathBuf>,
        /// Shards written by mtrec-prep (default: the config's data.shards).
        #[arg(long)]
        shards: Option<PathBuf>,
        /// A training checkpoint (default: the model folder's pretrained weights).
        #[arg(long)]
        checkpoint: Option<PathBuf>,
        /// Run config that built the checkpoint (user encoder, AMF, heads).
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
        overrides: Vec<String>,
        /// Write one user vector per impression of `--split` (impression_id, vector) instead of
        /// the news vectors.
        #[arg(long)]
        users: bool,
        /// With `--users`: `dev` or `test`.
        #[arg(long, requires = "users", value_parser = parse_split)]
        split: Option<Split>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Time training steps: on the reference workload (DESIGN.md; the config's surgery and
    /// main-task only, one process), or on real batches of the config's shards (`mind`: per-rank
    /// and global de-duplication, on every rank of an mpirun job).
    Bench {
        #[command(flatten)]
        config: ConfigArgs,
        /// `reference` or `mind`.
        #[arg(long, value_enum, default_value_t = commands::Workload::Reference)]
        workload: commands::Workload,
        /// With `--workload mind`: samples per rank and step, one variant each.
        #[arg(long, value_delimiter = ',', default_value = "32,64")]
        batch_per_rank: Vec<usize>,
        /// With `--workload mind`: a variant, `NAME SECTION.KEY=VALUE ...` (repeatable), e.g.
        /// `--variant "cached model.trainable_layers=2"`. Default: per-rank and global
        /// de-duplication (per-rank alone in one process).
        #[arg(long = "variant")]
        variants: Vec<String>,
        /// Measured steps of each kind (at least 1).
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
        steps: u32,
        /// Unmeasured steps of each kind before them.
        #[arg(long, default_value_t = 1)]
        warmup: u32,
        /// Print one JSON object (rank 0) instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Write a run's figures (losses, gradient conflict, dev metrics, learning rates, samples/s)
    /// and report.md (`train` writes it at the end of every run).
    Report {
        run_dir: PathBuf,
        /// Default: RUN_DIR/report.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Write the table of the runs' best dev metrics (with the paper's Table 1 where a run is one
    /// of its rows) and their dev-AUC curves overlaid.
    Compare {
        #[arg(required = true)]
        run_dirs: Vec<PathBuf>,
        #[arg(long, default_value = "compare")]
        out: PathBuf,
    },
    /// Print the resolved config (file, `--set` overrides and defaults) as TOML, or one field.
    Config {
        #[command(flatten)]
        config: ConfigArgs,
        /// Print only this field's value, for example `train.run_dir`.
        #[arg(long, value_name = "SECTION.KEY")]
        get: Option<String>,
    },
    /// Serve a trained model over HTTP: rank candidates, recommend from the whole catalogue,
    /// add news while running, user vectors (README, "Serving"). Prints `listening on URL`
    /// once the port is open; `/readyz` answers 200 once the news table is built.
    Serve {
        #[command(flatten)]
        config: ConfigArgs,
        #[command(flatten)]
        options: mtrec_serve::ServeOptions,
    },
    /// Print what this binary found: libtorch, CUDA devices, MPI, rank/world, NCCL.
    Doctor,
    /// Run every collective with known values on the config's device and `dist.backend` (every
    /// rank of an mpirun job); exits 1 when one computes a wrong value. `--abort` then ends the
    /// job through the failure path (NCCL abort, `MPI_Abort`) instead of a clean end (NCCL
    /// destroy, `MPI_Finalize`).
    CheckCollectives {
        #[command(flatten)]
        config: ConfigArgs,
        #[arg(long)]
        abort: bool,
    },
}

fn main() {
    keep_freed_memory();
    let cli = Cli::parse();
    init_logging();
    std::panic::set_hook(Box::new(|info| {
        let mut message = format!("error: {}panic: {info}", rank_prefix());
        if std::env::var_os("RUST_BACKTRACE").is_some_and(|v| v != "0") {
            message.push_str(&format!("\n{}", std::backtrace::Backtrace::force_capture()));
        }
        mtrec_dist::say(&message);
        mtrec_dist::abort_job(101);
    }));
    let job = Job::start().unwrap_or_else(|e| fail(e.into()));
    match run(cli, &job) {
        Ok(code) => {
            drop(job);
            std::process::exit(code);
        }
        Err(e) => fail(e),
    }
}

/// `rank N on HOST: ` in a job launched by mpirun or srun, nothing in a plain run.
fn rank_prefix() -> String {
    if mtrec_dist::launched_by_mpi() { format!("{}: ", mtrec_dist::who()) } else { String::new() }
}

/// The one failure path: this rank's message, then the whole job ends, with
/// [`mtrec_dist::EXIT_TRANSPORT`] when a collective failed between ranks (a restart may cure
/// it) and 1 for everything else (a config, data, file or numeric error: a restart would fail
/// again).
fn fail(error: anyhow::Error) -> ! {
    mtrec_dist::say(&format!("error: {}{}", rank_prefix(), one_message(&error)));
    let transport =
        error.chain().any(|e| e.downcast_ref::<mtrec_dist::DistError>().is_some_and(|d| d.is_retryable()));
    mtrec_dist::abort_job(if transport { mtrec_dist::EXIT_TRANSPORT } else { 1 })
}

/// The error and its causes, each said once: a cause whose text its parent already ends with
/// (an OS error that an I/O error also displays) is left out.
fn one_message(error: &anyhow::Error) -> String {
    let mut message = String::new();
    for cause in error.chain().map(ToString::to_string) {
        if !message.ends_with(&cause) {
            if !message.is_empty() {
                message.push_str(": ");
            }
            message.push_str(&cause);
        }
    }
    message
}

/// Keeps freed memory in the process for reuse. glibc's defaults hand every allocation above
/// 32 MiB back to the kernel on free and trim the heap: a training step allocates and frees
/// gigabytes of activations, so each step paid again for every page it touched (measured on the
/// reference workload: 7.8M page faults in 45 s, 0.8M with this, and a 20-30% faster step).
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only changes allocator parameters; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, -1); // -1: never trim
        libc::mallopt(libc::M_TOP_PAD, 256 << 20);
    }
}

/// Rank 0 logs at `info`, the others at `warn` (what every rank would say alike, rank 0 says);
/// colours only on a terminal, never into a log file.
fn init_logging() {
    let rank = mtrec_dist::launcher_rank();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| if rank == 0 { "info".into() } else { "warn".into() }),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// `dev` or `test`.
fn parse_split(name: &str) -> Result<Split, String> {
    match name {
        "dev" => Ok(Split::Dev),
        "test" => Ok(Split::Test),
        other => Err(format!("{other:?}: expected dev or test")),
    }
}

/// Runs the command; returns the exit code of a command that did not fail.
fn run(cli: Cli, job: &Job) -> anyhow::Result<i32> {
    let done = |result: anyhow::Result<()>| result.map(|()| 0);
    match cli.command {
        Command::Train { config, resume, reschedule } => {
            commands::train(job, &config, resume.as_deref(), reschedule)
        }
        Command::Eval { config, checkpoint } => done(commands::eval(job, &config, &checkpoint)),
        Command::Predict { config, checkpoint, split, out } => {
            done(commands::predict(&config, &checkpoint, split, &out))
        }
        Command::Embed { model, shards, checkpoint, config, overrides, users, split, out } => {
            let users = match (users, split) {
                (true, None) => anyhow::bail!("embed --users needs --split dev or --split test"),
                (true, split) => split,
                (false, _) => None,
            };
            let options = commands::EmbedOptions { model, shards, checkpoint, config, overrides, users, out };
            done(commands::embed(options))
        }
        Command::Bench { config, workload, batch_per_rank, variants, steps, warmup, json } => {
            let options = commands::BenchOptions {
                workload,
                batch_per_rank,
                variants,
                warmup: warmup as usize,
                steps: steps as usize,
                json,
            };
            done(commands::bench(job, &config, &options))
        }
        Command::Report { run_dir, out } => done(commands::report(&run_dir, out.as_deref()).map(|_| ())),
        Command::Compare { run_dirs, out } => done(commands::compare(&run_dirs, &out)),
        Command::Config { config, get } => done(commands::show_config(&config, get.as_deref())),
        Command::Serve { config, options } => {
            done(mtrec_serve::serve(&config.config, &config.overrides, &options))
        }
        Command::Doctor => done(doctor::run(job)),
        Command::CheckCollectives { config, abort } => commands::check_collectives(job, &config, abort),
    }
}

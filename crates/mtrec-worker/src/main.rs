//! `mtrec-worker`: one process per GPU (or CPU rank) of an mtrec job.
//!
//! Subcommands: `doctor` (what this binary found: libtorch, CUDA, MPI, NCCL).

mod doctor;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "mtrec-worker", version, about = "Train, evaluate and serve MTRec news recommenders")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print what this binary found: libtorch, CUDA devices, MPI, rank/world, NCCL.
    Doctor,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Doctor => doctor::run(),
    }
}

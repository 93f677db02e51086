//! Rank/world discovery and the [`Collective`] trait that the trainer all-reduces through.
//!
//! Three implementations, chosen by [`Job::collective`]:
//! - [`Local`]: a world of one (a plain `mtrec-worker` run, or one rank); every collective is the
//!   identity. A world of one on CUDA may ask for NCCL instead ([`Backend::Cuda`]).
//! - [`MpiCollective`]: CPU tensors reduced with MPI (rsmpi), when launched by `mpirun` or `srun`.
//! - [`NcclCollective`]: CUDA tensors reduced in place with NCCL (cudarc, loaded at run time so the
//!   code builds and links without CUDA); MPI bootstraps the communicator and reduces host values.
//!
//! A [`Job`] holds MPI and the communicators for the process's lifetime; [`abort_job`] ends every
//! rank when one fails, and the [`Watchdog`] does so when no progress is reported in time.
//!
//! This crate knows nothing about models or training: it moves tensors and numbers between ranks.

mod check;
pub mod gpu;
mod job;
mod liveness;
mod local;
mod mpi_collective;
mod nccl;
mod watchdog;

pub use check::{CollectiveCheck, check_collectives};
pub use job::{ABORT_BACKSTOP, Job, abort_job, hostname, launcher_rank, rank, say, who};
pub use liveness::{EXIT_PEER_LOST, record_losses_in};
pub use local::Local;
pub use mpi_collective::EXIT_TRANSPORT;
pub use mpi_collective::MpiCollective;
pub use mpi_collective::mpi_library_version;
pub use nccl::{NcclCollective, nccl_library_status};
pub use watchdog::{EXIT_STALLED, Heartbeat, Watchdog};

use tch::Tensor;

/// Everything that can go wrong while discovering the world or moving data between ranks.
#[derive(Debug, thiserror::Error)]
pub enum DistError {
    #[error("MPI could not be initialised (was it already initialised in this process?)")]
    MpiInit,
    #[error("{op}: tensor must be {expected}, got {got}")]
    UnsupportedTensor { op: &'static str, expected: &'static str, got: String },
    #[error("{op}: root rank {root} is outside the world of {world_size} ranks")]
    BadRoot { op: &'static str, root: usize, world_size: usize },
    #[error("NCCL: {0}")]
    Nccl(String),
    /// A collective between ranks failed in the transport: a restart may cure it.
    #[error("{0}")]
    Transport(String),
    #[error("torch: {0}")]
    Torch(#[from] tch::TchError),
}

impl DistError {
    /// Whether a restart of the job may cure this error (see README, "Exit codes").
    pub fn is_retryable(&self) -> bool {
        matches!(self, DistError::Transport(_))
    }
}

/// Where this process sits in the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// Global rank, `0..world_size`.
    pub rank: usize,
    /// Number of processes in the job.
    pub world_size: usize,
    /// Rank among the processes on this node (the GPU this rank drives).
    pub local_rank: usize,
    /// Number of processes on this node.
    pub local_size: usize,
}

impl Placement {
    /// A world of one.
    pub const SINGLE: Placement = Placement { rank: 0, world_size: 1, local_rank: 0, local_size: 1 };

    /// Rank 0 logs the run and writes checkpoints.
    pub fn is_main(&self) -> bool {
        self.rank == 0
    }
}

/// The CUDA device index a rank drives, of the `visible` GPUs its process sees: its local rank
/// when the node's GPUs are all visible (`mpirun`), GPU 0 when the launcher bound one GPU to each
/// task (SLURM's `--gpus-per-task=1`). Anything else would put two ranks on one GPU or name a GPU
/// that does not exist, and is refused.
pub fn local_gpu(local_rank: usize, visible: usize) -> Result<usize, String> {
    match visible {
        0 => Err("no CUDA device is visible to this process".into()),
        _ if local_rank < visible => Ok(local_rank),
        1 => Ok(0),
        _ => Err(format!(
            "local rank {local_rank} but only {visible} GPUs are visible to this process: run at most \
             {visible} ranks per node, or bind one GPU to each task"
        )),
    }
}

/// Reductions between the ranks of one job. Every rank must call the same collectives in the
/// same order with tensors of the same shape; implementations check what they can locally.
pub trait Collective {
    /// Where this rank sits.
    fn placement(&self) -> Placement;

    /// Replaces `tensor` on every rank by the element-wise mean over ranks.
    fn all_reduce_mean(&self, tensor: &mut Tensor) -> Result<(), DistError>;

    /// [`Collective::all_reduce_mean`] started before `work` runs and completed after it: the
    /// trainer reduces `g_main` while the auxiliary backward pass computes. How much really
    /// overlaps is the transport's: MPI starts one non-blocking all-reduce per 4 MiB bucket,
    /// which progress as the library allows; NCCL enqueues on the compute stream without
    /// blocking the host, so the GPU runs the reduction before the auxiliary backward's kernels
    /// (an overlap on the GPU would need a second stream and events). `work` must not touch
    /// `tensor`.
    fn all_reduce_mean_during(&self, tensor: &mut Tensor, work: &mut dyn FnMut()) -> Result<(), DistError> {
        self.all_reduce_mean(tensor)?;
        work();
        Ok(())
    }

    /// Replaces `tensor` on every rank by its value on `root`.
    fn broadcast(&self, tensor: &mut Tensor, root: usize) -> Result<(), DistError>;

    /// Replaces `bytes` on every rank by `root`'s (any length: resolved configs, paths).
    fn broadcast_bytes(&self, bytes: &mut Vec<u8>, root: usize) -> Result<(), DistError>;

    /// Element-wise sum over ranks of host values (metric sums, counts, checksums).
    fn all_reduce_sum_f64(&self, values: &mut [f64]) -> Result<(), DistError>;

    /// Concatenates every rank's `tensor` (same shape on every rank) along a new leading
    /// dimension, in rank order: `[d0, ...]` -> `[world_size, d0, ...]`.
    fn all_gather(&self, tensor: &Tensor) -> Result<Tensor, DistError>;

    /// The inverse of [`Collective::all_gather`] for gradients: `[world_size, d0, ...]` (the
    /// same shape on every rank) -> this rank's block, summed over the ranks, `[d0, ...]`.
    fn reduce_scatter_sum(&self, tensor: &Tensor) -> Result<Tensor, DistError>;

    /// Short name for logs: `local`, `mpi`, `nccl`.
    fn backend(&self) -> &'static str;
}

/// True when this process was started by an MPI launcher (`mpirun`, `srun --mpi=pmix`, ...).
pub fn launched_by_mpi() -> bool {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS", "MV2_COMM_WORLD_SIZE"]
        .iter()
        .any(|var| std::env::var_os(var).is_some())
}

/// What a rank's tensors are reduced with, by where they live (`dist.backend` and
/// `train.device`). A world of one reduces nothing ([`Local`]) unless asked for NCCL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// CPU tensors, over MPI.
    Cpu,
    /// CUDA tensors, over NCCL; `nccl_alone` builds NCCL for a world of one too, so that its
    /// collectives run for real on one GPU (`dist.backend = "nccl"`).
    Cuda { nccl_alone: bool },
}

/// Element count of a tensor that a collective may reduce in place: contiguous, one of the
/// float types this crate moves, on `device` (the CPU for MPI, this rank's GPU for NCCL: a
/// tensor on another GPU would be read through a pointer of the wrong device).
fn check_reducible(op: &'static str, tensor: &Tensor, device: tch::Device) -> Result<usize, DistError> {
    let float = matches!(tensor.kind(), tch::Kind::Float | tch::Kind::Double | tch::Kind::BFloat16);
    if tensor.device() != device || !tensor.is_contiguous() || !float {
        return Err(DistError::UnsupportedTensor {
            op,
            expected: match device {
                tch::Device::Cuda(_) => "a contiguous f32/f64/bf16 tensor on this rank's GPU",
                _ => "a contiguous f32/f64 CPU tensor",
            },
            got: format!(
                "{:?} on {:?}{}{}",
                tensor.kind(),
                tensor.device(),
                if tensor.is_contiguous() { "" } else { " (not contiguous)" },
                if tensor.device() != device { format!(", expected on {device:?}") } else { String::new() }
            ),
        });
    }
    Ok(tensor.numel())
}

/// Two ranks of a node that would drive one GPU, from every rank's `HOST<TAB>PCI bus id` in
/// rank order: NCCL refuses them only with `ncclInvalidUsage`, so they are named before it
/// starts.
fn shared_gpu(host_and_bus_ids: &[String]) -> Option<String> {
    for (i, a) in host_and_bus_ids.iter().enumerate() {
        if let Some(j) = host_and_bus_ids[i + 1..].iter().position(|b| b == a) {
            let (host, bus_id) = a.split_once('\t').unwrap_or((a, ""));
            return Some(format!(
                "ranks {i} and {} on {host} would both drive the GPU at PCI bus id {bus_id}: NCCL needs a \
                 GPU of its own for each rank; run at most as many ranks per node as it has GPUs (what \
                 each rank sees comes from CUDA_VISIBLE_DEVICES and the launcher's GPU binding)",
                i + 1 + j
            ));
        }
    }
    None
}

/// A tensor of `world_size` blocks along its first dimension (what a reduce-scatter splits).
fn check_world_blocks(op: &'static str, tensor: &Tensor, world_size: usize) -> Result<(), DistError> {
    match tensor.size().first() {
        Some(&blocks) if blocks == world_size as i64 => Ok(()),
        _ => Err(DistError::UnsupportedTensor {
            op,
            expected: "a tensor of one block per rank along its first dimension",
            got: format!("shape {:?} in a world of {world_size}", tensor.size()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_ranks_on_one_gpu_of_a_node_are_named() {
        let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(shared_gpu(&ids(&["n1\t0000:01:00.0", "n1\t0000:02:00.0", "n2\t0000:01:00.0"])), None);
        let message =
            shared_gpu(&ids(&["n1\t0000:01:00.0", "n2\t0000:01:00.0", "n1\t0000:01:00.0"])).unwrap();
        assert!(
            message.starts_with("ranks 0 and 2 on n1 would both drive the GPU at PCI bus id 0000:01:00.0"),
            "{message}"
        );
    }

    #[test]
    fn a_tensor_on_another_device_is_refused() {
        let t = Tensor::zeros([2], (tch::Kind::Float, tch::Device::Cpu));
        assert_eq!(check_reducible("op", &t, tch::Device::Cpu).unwrap(), 2);
        let err = check_reducible("op", &t, tch::Device::Cuda(1)).unwrap_err().to_string();
        assert!(err.contains("on this rank's GPU, got Float on Cpu, expected on Cuda(1)"), "{err}");
        let ints = Tensor::zeros([2], (tch::Kind::Int64, tch::Device::Cpu));
        assert!(check_reducible("op", &ints, tch::Device::Cpu).is_err());
    }

    #[test]
    fn a_rank_drives_its_local_gpu_or_the_one_it_was_given() {
        assert_eq!(local_gpu(3, 8), Ok(3)); // mpirun: every GPU of the node visible
        assert_eq!(local_gpu(3, 1), Ok(0)); // one GPU bound to each task
        assert_eq!(local_gpu(0, 1), Ok(0));
        assert!(local_gpu(4, 2).unwrap_err().contains("local rank 4 but only 2 GPUs"));
        assert!(local_gpu(0, 0).is_err());
    }
}

//! The job a process belongs to, and how a failing rank ends it.
//!
//! [`Job::start`] initialises MPI first thing (when a launcher started the process), so that a
//! failure in any later phase can end every rank: [`abort_job`] prints nothing itself, aborts
//! the NCCL communicator if one is up (`ncclCommAbort`, which never waits on peers), calls
//! `MPI_Abort` (mpirun and srun then end every rank), and ends the process with `_exit`: no
//! `MPI_Finalize` (a barrier over every rank), no atexit handlers or C++/CUDA static teardown
//! (which can wait behind a stuck kernel). A backstop thread `_exit`s after
//! [`ABORT_BACKSTOP`] if any of that hangs.
//!
//! The communicators live in the [`Job`], which the binary's `main` owns until the very end: an
//! error returned from a command leaves them alive for the abort, and only a run that succeeded
//! drops them (`ncclCommDestroy`, then `MPI_Finalize`, which every rank then reaches).
use crate::liveness::{self, Liveness, Rendezvous};
use crate::{Backend, Collective, DistError, Local, MpiCollective, NcclCollective, Placement};
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// How long [`abort_job`] waits for `ncclCommAbort` and `MPI_Abort` before `_exit`.
pub const ABORT_BACKSTOP: Duration = Duration::from_secs(10);

static RANK: AtomicUsize = AtomicUsize::new(usize::MAX);
static WORLD_SIZE: AtomicUsize = AtomicUsize::new(1);
static MPI_UP: AtomicBool = AtomicBool::new(false);
/// The NCCL communicator to abort, null when none is up.
static NCCL_COMM: AtomicPtr<std::ffi::c_void> = AtomicPtr::new(std::ptr::null_mut());

/// This process's rank: MPI's once it is up, else what the launcher set in the environment
/// (0 in a plain run).
pub fn rank() -> usize {
    match RANK.load(Ordering::Relaxed) {
        usize::MAX => launcher_rank(),
        rank => rank,
    }
}

/// This machine's hostname.
pub fn hostname() -> &'static str {
    static HOSTNAME: OnceLock<String> = OnceLock::new();
    HOSTNAME.get_or_init(|| {
        let mut buffer = [0u8; 256];
        // SAFETY: gethostname writes at most the buffer's length.
        let ok = unsafe { libc::gethostname(buffer.as_mut_ptr() as *mut libc::c_char, buffer.len()) } == 0;
        let end = buffer.iter().position(|b| *b == 0).unwrap_or(buffer.len());
        if ok { String::from_utf8_lossy(&buffer[..end]).into_owned() } else { "unknown-host".into() }
    })
}

/// `rank N on HOST`: how a rank names itself in what it prints.
pub fn who() -> String {
    format!("rank {} on {}", rank(), hostname())
}

/// The rank a launcher (mpirun, srun) set in the environment, before MPI starts.
pub fn launcher_rank() -> usize {
    ["OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "SLURM_PROCID"]
        .iter()
        .find_map(|v| std::env::var(v).ok()?.parse().ok())
        .unwrap_or(0)
}

pub(crate) fn register_nccl(comm: *mut std::ffi::c_void) {
    NCCL_COMM.store(comm, Ordering::SeqCst);
}

/// Takes the communicator out of the abort path (it is being destroyed).
pub(crate) fn unregister_nccl() -> *mut std::ffi::c_void {
    NCCL_COMM.swap(std::ptr::null_mut(), Ordering::SeqCst)
}

/// Writes `line` and a newline to stderr in one write, so that a launcher that merges the
/// ranks' output (mpirun, srun) never interleaves another rank's text into it.
pub fn say(line: &str) {
    let _ = std::io::stderr().write_all(format!("{line}\n").as_bytes());
}

/// Ends the whole job from this rank, at once, with `code` (see the module documentation).
/// The caller prints the reason first.
pub fn abort_job(code: i32) -> ! {
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    liveness::announce_failing();
    std::thread::spawn(move || {
        std::thread::sleep(ABORT_BACKSTOP);
        // SAFETY: `_exit` ends the process without running any handler.
        unsafe { libc::_exit(code) }
    });
    let comm = unregister_nccl();
    if !comm.is_null() {
        // SAFETY: a communicator made by ncclCommInitRank and not destroyed (it was unregistered
        // before any destroy); abort is NCCL's way out of a failed job.
        let _ = unsafe { cudarc::nccl::result::comm_abort(comm as cudarc::nccl::sys::ncclComm_t) };
    }
    if MPI_UP.load(Ordering::SeqCst) && WORLD_SIZE.load(Ordering::SeqCst) > 1 {
        // SAFETY: MPI is initialised and not finalised (the job never finalises after an error).
        unsafe {
            mpi::ffi::MPI_Abort(mpi::ffi::RSMPI_COMM_WORLD, code);
        }
    }
    // SAFETY: as above.
    unsafe { libc::_exit(code) }
}

/// The job of this process: MPI (when launched by mpirun or srun) and the collectives built on
/// it. Owned by `main` for the whole run (see the module documentation).
pub struct Job {
    placement: Placement,
    /// The link that tells a lost rank (a world of more than one).
    liveness: Option<Liveness>,
    nccl: OnceLock<NcclCollective>,
    mpi: Option<MpiCollective>,
    // Declared last: `MPI_Finalize` after the collectives above are released.
    _universe: Option<mpi::environment::Universe>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").field("placement", &self.placement).finish()
    }
}

impl Job {
    /// Initialises MPI when a launcher started this process ([`crate::launched_by_mpi`]);
    /// otherwise a world of one.
    pub fn start() -> Result<Job, DistError> {
        if !crate::launched_by_mpi() {
            RANK.store(0, Ordering::Relaxed);
            return Ok(Job {
                placement: Placement::SINGLE,
                liveness: None,
                nccl: OnceLock::new(),
                mpi: None,
                _universe: None,
            });
        }
        // Multiple: the watchdog and the panic hook may call MPI_Abort from their own threads
        // while the main thread waits in a collective.
        let (universe, _) =
            mpi::initialize_with_threading(mpi::Threading::Multiple).ok_or(DistError::MpiInit)?;
        let mpi = MpiCollective::world();
        let placement = mpi.placement();
        RANK.store(placement.rank, Ordering::Relaxed);
        WORLD_SIZE.store(placement.world_size, Ordering::SeqCst);
        MPI_UP.store(true, Ordering::SeqCst);
        crate::mpi_collective::report_errors_as_transport_failures();
        let hosts = Arc::new(mpi.all_gather_strings(hostname()));
        let liveness = (placement.world_size > 1).then(|| start_liveness(&mpi, &hosts)).flatten();
        Ok(Job { placement, liveness, nccl: OnceLock::new(), mpi: Some(mpi), _universe: Some(universe) })
    }

    /// Where this process sits.
    pub fn placement(&self) -> Placement {
        self.placement
    }

    /// From now on a rank that sends nothing for `timeout` is lost (the command's
    /// `dist.timeout_s`; 60 s before a command sets it).
    pub fn set_peer_timeout(&self, timeout: Duration) {
        if let Some(liveness) = &self.liveness {
            liveness.set_timeout(timeout);
        }
    }

    /// The collective for `backend`: a world of one is [`Local`] (no NCCL needed) unless it asks
    /// for NCCL; CPU tensors reduce over MPI; CUDA tensors over NCCL, bootstrapped over MPI
    /// (built on first use). Every rank must ask for the same backend (with `train.device =
    /// "auto"`, a node whose GPUs are not visible would otherwise compute on the CPU while the
    /// others wait in NCCL): the ranks agree first, and a rank that differs is refused, naming
    /// the counts.
    pub fn collective(&self, backend: Backend) -> Result<&dyn Collective, DistError> {
        if let Some(nccl) = self.nccl.get() {
            return Ok(nccl);
        }
        let world = self.placement.world_size;
        let mpi = match &self.mpi {
            _ if world == 1 && backend == (Backend::Cuda { nccl_alone: true }) => return self.nccl(),
            Some(mpi) if world > 1 => mpi,
            _ => return Ok(&Local),
        };
        let mut cuda = [f64::from(u8::from(backend != Backend::Cpu))];
        mpi.all_reduce_sum_f64(&mut cuda)?;
        let on_cuda = cuda[0] as usize;
        if on_cuda != 0 && on_cuda != world {
            let here = if backend == Backend::Cpu { "the CPU (no CUDA device visible)" } else { "CUDA" };
            return Err(DistError::Nccl(format!(
                "this rank computes on {here}, but {on_cuda} of the {world} ranks chose CUDA: every rank \
                 must see its GPU (or set train.device on all)"
            )));
        }
        match backend {
            Backend::Cpu => Ok(mpi),
            Backend::Cuda { .. } => self.nccl(),
        }
    }

    /// The NCCL communicator of this job, built on first use.
    fn nccl(&self) -> Result<&dyn Collective, DistError> {
        let nccl = NcclCollective::new(self.placement, self.mpi.as_ref().map(|_| MpiCollective::world()))?;
        Ok(self.nccl.get_or_init(|| nccl))
    }
}

impl Drop for Job {
    /// Only a command that succeeded drops its job: its peers hear a goodbye, not a loss.
    fn drop(&mut self) {
        if let Some(liveness) = &self.liveness {
            liveness.finish();
        }
    }
}

/// Rank 0 listens and sends its addresses to the others, which connect ([`crate::liveness`]).
/// A rank without the link says why; the job goes on with the watchdog alone.
fn start_liveness(mpi: &MpiCollective, hosts: &Arc<Vec<String>>) -> Option<Liveness> {
    let rank = mpi.placement().rank;
    let mut bytes = Vec::new();
    let mut listener = None;
    if rank == 0 {
        match Liveness::listen() {
            Ok((l, rendezvous)) => {
                bytes = rendezvous.encode();
                listener = Some(l);
            }
            Err(e) => say(&format!(
                "warning: {}: no liveness link ({e}): a lost peer is seen by the watchdog only",
                who()
            )),
        }
    }
    if mpi.broadcast_bytes(&mut bytes, 0).is_err() {
        return None;
    }
    if let Some(listener) = listener {
        return Some(Liveness::watch_all(listener, Arc::clone(hosts)));
    }
    let rendezvous = Rendezvous::decode(&bytes)?;
    match Liveness::watch_rank_zero(rank, &rendezvous, Arc::clone(hosts)) {
        Ok(liveness) => Some(liveness),
        Err(e) => {
            say(&format!("warning: {}: {e}", who()));
            None
        }
    }
}

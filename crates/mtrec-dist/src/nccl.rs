//! GPU collectives with NCCL, through cudarc with dynamic loading: `libnccl` and `libcuda` are
//! opened at run time, so this builds (and CI compiles it) on machines without CUDA.
//!
//! Tensors are reduced in place through their device pointers on the legacy default stream
//! (stream 0), the stream libtorch's kernels run on unless told otherwise, so the reduction is
//! ordered after the backward pass that produced the gradients without a host synchronisation.
use crate::{Collective, DistError, MpiCollective, Placement, check_reducible, check_world_blocks};
use cudarc::nccl::{result as nccl, sys};
use tch::{Kind, Tensor};

/// NCCL communicator over all ranks, one GPU per rank ([`crate::local_gpu`]). A world of one
/// builds one only when asked (`dist.backend = "nccl"`, [`crate::Backend::Cuda`]).
pub struct NcclCollective {
    comm: sys::ncclComm_t,
    device: usize,
    placement: Placement,
    /// Bootstraps the communicator and moves host values; none in a world of one started
    /// without a launcher.
    mpi: Option<MpiCollective>,
}

impl std::fmt::Debug for NcclCollective {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NcclCollective")
            .field("placement", &self.placement)
            .field("device", &self.device)
            .finish()
    }
}

fn nccl_err(what: &str, err: impl std::fmt::Debug) -> DistError {
    DistError::Nccl(format!("{what}: {err:?}"))
}

/// A failed NCCL call between ranks (a peer gone, a broken link): retryable. Carries NCCL's own
/// description of the last error (`ncclGetLastError`), which names what the code alone does not.
fn transport_err(what: &str, err: impl std::fmt::Debug, comm: sys::ncclComm_t) -> DistError {
    // SAFETY: NCCL returns a NUL-terminated string it owns (or null); `comm` may be null.
    let last = unsafe {
        let text = sys::ncclGetLastError(comm);
        if text.is_null() {
            String::new()
        } else {
            std::ffi::CStr::from_ptr(text).to_string_lossy().trim().to_string()
        }
    };
    let detail = if last.is_empty() { String::new() } else { format!(" ({last})") };
    DistError::Transport(format!("NCCL {what}: {err:?}{detail}"))
}

/// NCCL's version when its library can be opened, otherwise what to do about it.
pub fn nccl_library_status() -> Result<String, String> {
    // SAFETY: only tries to open the library by name.
    if !unsafe { sys::is_culib_present() } {
        return Err("libnccl.so not found: the build links the venv's nvidia-nccl wheel when it has \
                    one; otherwise install NCCL, or put a directory holding libnccl.so (a link to a \
                    libnccl.so.2) on LD_LIBRARY_PATH"
            .into());
    }
    let code = nccl::get_nccl_version().map_err(|e| format!("ncclGetVersion failed: {e:?}"))?;
    Ok(format!("{}.{}.{}", code / 10000, (code / 100) % 100, code % 100))
}

impl NcclCollective {
    /// Makes the rank's GPU ([`crate::local_gpu`]) current, refuses two ranks of a node on one
    /// GPU (by PCI bus id), has rank 0 create the communicator id, broadcasts it over MPI and
    /// joins the communicator.
    pub(crate) fn new(placement: Placement, mpi: Option<MpiCollective>) -> Result<Self, DistError> {
        nccl_library_status().map_err(DistError::Nccl)?;
        let visible = crate::gpu::count().map_err(DistError::Nccl)?;
        let device = crate::local_gpu(placement.local_rank, visible).map_err(DistError::Nccl)?;
        let bus_id = crate::gpu::pci_bus_id(device).map_err(DistError::Nccl)?;
        if let Some(mpi) = &mpi
            && let Some(shared) =
                crate::shared_gpu(&mpi.all_gather_strings(&format!("{}\t{bus_id}", crate::hostname())))
        {
            return Err(DistError::Nccl(shared));
        }
        crate::gpu::make_current(device).map_err(DistError::Nccl)?;
        let mut id = if placement.rank == 0 {
            nccl::get_uniqueid().map_err(|e| nccl_err("ncclGetUniqueId", e))?
        } else {
            sys::ncclUniqueId { internal: [0; 128] }
        };
        if let Some(mpi) = &mpi {
            // SAFETY: the id is 128 plain bytes.
            let id_bytes =
                unsafe { std::slice::from_raw_parts_mut(id.internal.as_mut_ptr() as *mut u8, 128) };
            mpi.broadcast_fixed(id_bytes, 0);
        }
        let mut comm: sys::ncclComm_t = std::ptr::null_mut();
        // SAFETY: `comm` is a valid out-pointer; every rank passes the same id and world size.
        unsafe {
            nccl::comm_init_rank(&mut comm, placement.world_size as i32, id, placement.rank as i32)
                .map_err(|e| transport_err("ncclCommInitRank", e, std::ptr::null_mut()))?;
        }
        crate::job::register_nccl(comm as *mut std::ffi::c_void);
        tracing::info!(rank = placement.rank, device, bus_id, "NCCL communicator ready");
        Ok(NcclCollective { comm, device, placement, mpi })
    }

    /// Element count of a tensor NCCL may reduce in place on this rank's GPU.
    fn check(&self, op: &'static str, tensor: &Tensor) -> Result<usize, DistError> {
        check_reducible(op, tensor, tch::Device::Cuda(self.device))
    }

    fn failed(&self, what: &str, err: impl std::fmt::Debug) -> DistError {
        transport_err(what, err, self.comm)
    }

    /// Host values move over MPI; a world of one has nothing to move.
    fn host(&self) -> &dyn Collective {
        match &self.mpi {
            Some(mpi) => mpi,
            None => &crate::Local,
        }
    }
}

fn nccl_type(kind: Kind) -> Result<sys::ncclDataType_t, DistError> {
    match kind {
        Kind::Float => Ok(sys::ncclDataType_t::ncclFloat32),
        Kind::Double => Ok(sys::ncclDataType_t::ncclFloat64),
        Kind::BFloat16 => Ok(sys::ncclDataType_t::ncclBfloat16),
        other => Err(DistError::UnsupportedTensor {
            op: "nccl",
            expected: "f32, f64 or bf16",
            got: format!("{other:?}"),
        }),
    }
}

impl Collective for NcclCollective {
    fn placement(&self) -> Placement {
        self.placement
    }

    fn all_reduce_mean(&self, tensor: &mut Tensor) -> Result<(), DistError> {
        let count = self.check("all_reduce_mean", tensor)?;
        let datatype = nccl_type(tensor.kind())?;
        let ptr = tensor.data_ptr();
        // SAFETY: contiguous CUDA tensor of `count` elements of `datatype`, reduced in place.
        unsafe {
            nccl::all_reduce(
                ptr,
                ptr,
                count,
                datatype,
                sys::ncclRedOp_t::ncclAvg,
                self.comm,
                std::ptr::null_mut(),
            )
            .map_err(|e| self.failed("ncclAllReduce", e))?;
        }
        Ok(())
    }

    fn broadcast(&self, tensor: &mut Tensor, root: usize) -> Result<(), DistError> {
        let world_size = self.placement().world_size;
        if root >= world_size {
            return Err(DistError::BadRoot { op: "broadcast", root, world_size });
        }
        let count = self.check("broadcast", tensor)?;
        let datatype = nccl_type(tensor.kind())?;
        let ptr = tensor.data_ptr();
        // SAFETY: as in all_reduce_mean.
        unsafe {
            nccl::broadcast(ptr, ptr, count, datatype, root as i32, self.comm, std::ptr::null_mut())
                .map_err(|e| self.failed("ncclBroadcast", e))?;
        }
        Ok(())
    }

    fn all_gather(&self, tensor: &Tensor) -> Result<Tensor, DistError> {
        let tensor = tensor.contiguous();
        let count = self.check("all_gather", &tensor)?;
        let datatype = nccl_type(tensor.kind())?;
        let mut shape = vec![self.placement.world_size as i64];
        shape.extend(tensor.size());
        let gathered = Tensor::zeros(shape.as_slice(), (tensor.kind(), tensor.device()));
        // SAFETY: contiguous CUDA tensors; `gathered` holds world_size * count elements.
        unsafe {
            nccl::all_gather(
                tensor.data_ptr(),
                gathered.data_ptr(),
                count,
                datatype,
                self.comm,
                std::ptr::null_mut(),
            )
            .map_err(|e| self.failed("ncclAllGather", e))?;
        }
        Ok(gathered)
    }

    fn reduce_scatter_sum(&self, tensor: &Tensor) -> Result<Tensor, DistError> {
        let world_size = self.placement.world_size;
        check_world_blocks("reduce_scatter_sum", tensor, world_size)?;
        let send = tensor.contiguous();
        let count = self.check("reduce_scatter_sum", &send)?;
        let datatype = nccl_type(send.kind())?;
        let block = Tensor::zeros(&tensor.size()[1..], (send.kind(), send.device()));
        // SAFETY: contiguous CUDA tensors; `block` holds count / world_size elements.
        unsafe {
            nccl::reduce_scatter(
                send.data_ptr(),
                block.data_ptr(),
                count / world_size,
                datatype,
                sys::ncclRedOp_t::ncclSum,
                self.comm,
                std::ptr::null_mut(),
            )
            .map_err(|e| self.failed("ncclReduceScatter", e))?;
        }
        Ok(block)
    }

    fn all_reduce_sum_f64(&self, values: &mut [f64]) -> Result<(), DistError> {
        self.host().all_reduce_sum_f64(values)
    }

    fn broadcast_bytes(&self, bytes: &mut Vec<u8>, root: usize) -> Result<(), DistError> {
        self.host().broadcast_bytes(bytes, root)
    }

    fn backend(&self) -> &'static str {
        "nccl"
    }
}

impl Drop for NcclCollective {
    /// Only a job that succeeded drops its communicator ([`crate::Job`]); a failing one aborts it.
    fn drop(&mut self) {
        // Whoever takes the communicator out of the abort path ends it: [`crate::abort_job`]
        // (abort) or this (destroy), never both.
        let comm = crate::job::unregister_nccl();
        if comm.is_null() {
            return;
        }
        // SAFETY: the communicator was created by comm_init_rank and is not used after this.
        if let Err(e) = unsafe { nccl::comm_destroy(comm as sys::ncclComm_t) } {
            tracing::warn!("ncclCommDestroy failed: {e:?}");
        }
    }
}

//! What the CUDA driver tells about a GPU (through cudarc, loaded at run time, so the crate
//! builds without CUDA): its name and its free and total memory. tch exposes neither these nor
//! torch's caching-allocator statistics.
use cudarc::driver::{result as cuda, sys};

/// A GPU's memory as the driver counts it (`cuMemGetInfo`), in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuMemory {
    pub free: usize,
    pub total: usize,
}

impl GpuMemory {
    /// Bytes in use on the GPU by any context: this process's CUDA context and what torch's
    /// caching allocator reserved (it keeps that until the process ends, so after a step this
    /// is at least the step's peak), and any other process's.
    pub fn used(&self) -> usize {
        self.total.saturating_sub(self.free)
    }
}

/// The memory of CUDA device `index` (torch's numbering, which is the driver's) now. Makes the
/// device's primary context, the one torch runs on, current on this thread.
pub fn memory(index: usize) -> Result<GpuMemory, String> {
    let device = device(index)?;
    // SAFETY: plain driver calls on a visible device; the primary context stays retained for the
    // process (torch holds it as well).
    unsafe {
        let ctx =
            cuda::primary_ctx::retain(device).map_err(|e| format!("cuDevicePrimaryCtxRetain: {e:?}"))?;
        cuda::ctx::set_current(ctx).map_err(|e| format!("cuCtxSetCurrent: {e:?}"))?;
    }
    let (free, total) = cuda::mem_get_info().map_err(|e| format!("cuMemGetInfo: {e:?}"))?;
    Ok(GpuMemory { free, total })
}

/// The name of CUDA device `index` (`NVIDIA H200`).
pub fn name(index: usize) -> Result<String, String> {
    cuda::device::get_name(device(index)?).map_err(|e| format!("cuDeviceGetName: {e:?}"))
}

fn device(index: usize) -> Result<sys::CUdevice, String> {
    // SAFETY: only tries to open the driver library by name (cudarc panics on a missing one).
    if !unsafe { sys::is_culib_present() } {
        return Err("the CUDA driver library (libcuda.so) is not installed".into());
    }
    cuda::init().map_err(|e| format!("cuInit: {e:?}"))?;
    cuda::device::get(index as i32).map_err(|e| format!("cuDeviceGet({index}): {e:?}"))
}

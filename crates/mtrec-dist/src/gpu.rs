//! What the CUDA driver tells about the GPUs (through cudarc, loaded at run time, so the crate
//! builds without CUDA): how many are visible, a GPU's name, PCI bus id and free and total
//! memory, and its primary context (the one torch runs on) made current. tch exposes none of
//! these, nor torch's caching-allocator statistics.
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

/// The memory of CUDA device `index` (torch's numbering, which is the driver's) now.
pub fn memory(index: usize) -> Result<GpuMemory, String> {
    make_current(index)?;
    let (free, total) = cuda::mem_get_info().map_err(|e| format!("cuMemGetInfo: {e:?}"))?;
    Ok(GpuMemory { free, total })
}

/// Makes the primary context of CUDA device `index` (the one torch runs on) current on this
/// thread.
pub fn make_current(index: usize) -> Result<(), String> {
    let device = device(index)?;
    // SAFETY: plain driver calls on a visible device; the primary context stays retained for the
    // process (torch holds it as well).
    unsafe {
        let ctx =
            cuda::primary_ctx::retain(device).map_err(|e| format!("cuDevicePrimaryCtxRetain: {e:?}"))?;
        cuda::ctx::set_current(ctx).map_err(|e| format!("cuCtxSetCurrent: {e:?}"))?;
    }
    Ok(())
}

/// How many CUDA devices this process sees.
pub fn count() -> Result<usize, String> {
    driver()?;
    cuda::device::get_count().map(|n| n as usize).map_err(|e| format!("cuDeviceGetCount: {e:?}"))
}

/// The PCI bus id of CUDA device `index` (`0000:01:00.0`): what tells two ranks apart that see
/// their GPUs under different indices.
pub fn pci_bus_id(index: usize) -> Result<String, String> {
    let device = device(index)?;
    let mut text = [0 as std::ffi::c_char; 32];
    // SAFETY: the driver writes at most `len` bytes, NUL-terminated, for a valid device.
    unsafe {
        sys::cuDeviceGetPCIBusId(text.as_mut_ptr(), text.len() as i32, device)
            .result()
            .map_err(|e| format!("cuDeviceGetPCIBusId: {e:?}"))?;
        Ok(std::ffi::CStr::from_ptr(text.as_ptr()).to_string_lossy().into_owned())
    }
}

/// The name of CUDA device `index` (`NVIDIA H200`).
pub fn name(index: usize) -> Result<String, String> {
    cuda::device::get_name(device(index)?).map_err(|e| format!("cuDeviceGetName: {e:?}"))
}

fn device(index: usize) -> Result<sys::CUdevice, String> {
    driver()?;
    cuda::device::get(index as i32).map_err(|e| format!("cuDeviceGet({index}): {e:?}"))
}

/// The driver library, opened and initialised.
fn driver() -> Result<(), String> {
    // SAFETY: only tries to open the driver library by name (cudarc panics on a missing one).
    if !unsafe { sys::is_culib_present() } {
        return Err("the CUDA driver library (libcuda.so) is not installed".into());
    }
    cuda::init().map_err(|e| format!("cuInit: {e:?}"))
}

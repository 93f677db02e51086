use crate::{Collective, DistError, Placement, check_reducible, check_world_blocks};
use mpi::collective::SystemOperation;
use mpi::datatype::Equivalence;
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::*;
use tch::{Kind, Tensor};

/// Exit code of a rank whose transport (MPI or NCCL) failed: a peer's link broke, a message
/// could not be delivered (retryable).
pub const EXIT_TRANSPORT: i32 = 72;

/// MPI's default answer to an error is to abort with the error's class as the exit code, which
/// says nothing to a launcher. This handler on the world communicator prints the rank, its host
/// and MPI's text, and ends the job with [`EXIT_TRANSPORT`].
pub(crate) fn report_errors_as_transport_failures() {
    unsafe extern "C" fn on_error(_comm: *mut mpi::ffi::MPI_Comm, code: *mut std::os::raw::c_int) {
        let mut text = [0 as std::os::raw::c_char; mpi::ffi::MPI_MAX_ERROR_STRING as usize + 1];
        let mut len = 0;
        // SAFETY: MPI passes a valid error code; the buffer holds MPI_MAX_ERROR_STRING bytes.
        let message = unsafe {
            mpi::ffi::MPI_Error_string(*code, text.as_mut_ptr(), &mut len);
            std::ffi::CStr::from_ptr(text.as_ptr()).to_string_lossy().into_owned()
        };
        crate::say(&format!(
            "error: {}: MPI: {message} (error code {}); ending the job",
            crate::who(),
            unsafe { *code }
        ));
        crate::abort_job(EXIT_TRANSPORT);
    }
    // SAFETY: the handler is called with (comm, code, ...) and reads only its two fixed
    // arguments, so a non-variadic definition receives them as the C ABI passes them; MPI is
    // initialised.
    unsafe {
        let handler: mpi::ffi::MPI_Comm_errhandler_function = Some(std::mem::transmute::<
            unsafe extern "C" fn(*mut mpi::ffi::MPI_Comm, *mut std::os::raw::c_int),
            unsafe extern "C" fn(*mut mpi::ffi::MPI_Comm, *mut std::os::raw::c_int, ...),
        >(on_error));
        let mut errhandler: mpi::ffi::MPI_Errhandler = std::mem::zeroed();
        if mpi::ffi::MPI_Comm_create_errhandler(handler, &mut errhandler) == 0 {
            mpi::ffi::MPI_Comm_set_errhandler(mpi::ffi::RSMPI_COMM_WORLD, errhandler);
        }
    }
}

/// Elements per non-blocking all-reduce bucket (4 MiB of f32).
const BUCKET_ELEMENTS: usize = 1 << 20;

/// CPU collectives over MPI's world communicator. MPI itself is initialised and finalised by the
/// [`crate::Job`].
pub struct MpiCollective {
    world: SimpleCommunicator,
    placement: Placement,
}

impl std::fmt::Debug for MpiCollective {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MpiCollective").field("placement", &self.placement).finish()
    }
}

impl MpiCollective {
    /// The world communicator of an initialised MPI, with rank, world size and the node-local
    /// rank (shared-memory split).
    pub(crate) fn world() -> Self {
        let world = SimpleCommunicator::world();
        let node = world.split_shared(world.rank());
        let placement = Placement {
            rank: world.rank() as usize,
            world_size: world.size() as usize,
            local_rank: node.rank() as usize,
            local_size: node.size() as usize,
        };
        MpiCollective { world, placement }
    }

    /// Broadcasts raw bytes from `root` (same length on every rank).
    pub(crate) fn broadcast_fixed(&self, bytes: &mut [u8], root: usize) {
        self.world.process_at_rank(root as i32).broadcast_into(bytes);
    }

    /// Every rank's `text` (up to 255 bytes), in rank order.
    pub(crate) fn all_gather_strings(&self, text: &str) -> Vec<String> {
        const WIDTH: usize = 256;
        let mut mine = [0u8; WIDTH];
        let bytes = &text.as_bytes()[..text.len().min(WIDTH - 1)];
        mine[..bytes.len()].copy_from_slice(bytes);
        let mut all = vec![0u8; WIDTH * self.placement.world_size];
        self.world.all_gather_into(&mine[..], &mut all[..]);
        all.chunks(WIDTH)
            .map(|c| {
                String::from_utf8_lossy(&c[..c.iter().position(|b| *b == 0).unwrap_or(WIDTH)]).into_owned()
            })
            .collect()
    }

    fn check_root(&self, op: &'static str, root: usize) -> Result<(), DistError> {
        if root >= self.placement.world_size {
            return Err(DistError::BadRoot { op, root, world_size: self.placement.world_size });
        }
        Ok(())
    }
}

/// The tensor's storage as a mutable slice of `T`.
///
/// # Safety
/// `tensor` must be a contiguous CPU tensor whose element type is `T`, with `numel` elements,
/// and no other view of it may be used while the slice lives.
unsafe fn host_slice<T>(tensor: &mut Tensor, numel: usize) -> &mut [T] {
    // SAFETY: guaranteed by the caller.
    unsafe { std::slice::from_raw_parts_mut(tensor.data_ptr() as *mut T, numel) }
}

fn sum_in_place<T: Equivalence + Copy>(world: &SimpleCommunicator, values: &mut [T]) {
    let send = values.to_vec();
    world.all_reduce_into(&send[..], values, SystemOperation::sum());
}

impl Collective for MpiCollective {
    fn placement(&self) -> Placement {
        self.placement
    }

    fn all_reduce_mean(&self, tensor: &mut Tensor) -> Result<(), DistError> {
        let numel = check_reducible("all_reduce_mean", tensor, tch::Device::Cpu)?;
        match tensor.kind() {
            // SAFETY: checked contiguous, on the CPU, of this element type.
            Kind::Float => sum_in_place(&self.world, unsafe { host_slice::<f32>(tensor, numel) }),
            Kind::Double => sum_in_place(&self.world, unsafe { host_slice::<f64>(tensor, numel) }),
            other => {
                return Err(DistError::UnsupportedTensor {
                    op: "all_reduce_mean",
                    expected: "f32 or f64 on the CPU",
                    got: format!("{other:?}"),
                });
            }
        }
        let _ = tensor.f_div_scalar_(self.placement.world_size as f64)?;
        Ok(())
    }

    fn all_reduce_mean_during(&self, tensor: &mut Tensor, work: &mut dyn FnMut()) -> Result<(), DistError> {
        let numel = check_reducible("all_reduce_mean", tensor, tch::Device::Cpu)?;
        if tensor.kind() != Kind::Float {
            self.all_reduce_mean(tensor)?;
            work();
            return Ok(());
        }
        // SAFETY: checked contiguous f32 on the CPU; `work` does not touch this tensor.
        let values = unsafe { host_slice::<f32>(tensor, numel) };
        let send = values.to_vec();
        mpi::request::scope(|scope| {
            // One non-blocking all-reduce per bucket, all in flight while `work` runs.
            let requests: Vec<_> = send
                .chunks(BUCKET_ELEMENTS)
                .zip(values.chunks_mut(BUCKET_ELEMENTS))
                .map(|(send, receive)| {
                    self.world.immediate_all_reduce_into(scope, send, receive, SystemOperation::sum())
                })
                .collect();
            work();
            for request in requests {
                request.wait();
            }
        });
        let _ = tensor.f_div_scalar_(self.placement.world_size as f64)?;
        Ok(())
    }

    fn broadcast(&self, tensor: &mut Tensor, root: usize) -> Result<(), DistError> {
        self.check_root("broadcast", root)?;
        let numel = check_reducible("broadcast", tensor, tch::Device::Cpu)?;
        let bytes = numel * tensor.kind().elt_size_in_bytes();
        // SAFETY: checked contiguous and on the CPU; viewed as bytes.
        let slice = unsafe { host_slice::<u8>(tensor, bytes) };
        self.broadcast_fixed(slice, root);
        Ok(())
    }

    fn broadcast_bytes(&self, bytes: &mut Vec<u8>, root: usize) -> Result<(), DistError> {
        self.check_root("broadcast_bytes", root)?;
        let mut len = [bytes.len() as u64];
        self.world.process_at_rank(root as i32).broadcast_into(&mut len[..]);
        bytes.resize(len[0] as usize, 0);
        if !bytes.is_empty() {
            self.broadcast_fixed(bytes, root); // MPI refuses an empty buffer
        }
        Ok(())
    }

    fn all_reduce_sum_f64(&self, values: &mut [f64]) -> Result<(), DistError> {
        sum_in_place(&self.world, values);
        Ok(())
    }

    fn all_gather(&self, tensor: &Tensor) -> Result<Tensor, DistError> {
        let tensor = tensor.contiguous();
        let numel = check_reducible("all_gather", &tensor, tch::Device::Cpu)?;
        let bytes = numel * tensor.kind().elt_size_in_bytes();
        let mut shape = vec![self.placement.world_size as i64];
        shape.extend(tensor.size());
        let mut gathered = Tensor::zeros(shape.as_slice(), (tensor.kind(), tensor.device()));
        let mut send = tensor.shallow_clone();
        // SAFETY: both contiguous CPU tensors, viewed as bytes; `gathered` holds world_size copies.
        let (send, receive) = unsafe {
            (
                host_slice::<u8>(&mut send, bytes),
                host_slice::<u8>(&mut gathered, bytes * self.placement.world_size),
            )
        };
        self.world.all_gather_into(&send[..], receive);
        Ok(gathered)
    }

    fn reduce_scatter_sum(&self, tensor: &Tensor) -> Result<Tensor, DistError> {
        let world_size = self.placement.world_size;
        check_world_blocks("reduce_scatter_sum", tensor, world_size)?;
        let mut send = tensor.contiguous();
        let numel = check_reducible("reduce_scatter_sum", &send, tch::Device::Cpu)?;
        let mut block = Tensor::zeros(&tensor.size()[1..], (tensor.kind(), tensor.device()));
        let block_numel = numel / world_size;
        fn scatter<T: Equivalence>(world: &SimpleCommunicator, send: &[T], receive: &mut [T]) {
            world.reduce_scatter_block_into(send, receive, SystemOperation::sum());
        }
        // SAFETY: both contiguous CPU tensors of this element type; `block` holds one of the
        // `world_size` equal blocks of `send`.
        unsafe {
            match tensor.kind() {
                Kind::Float => scatter(
                    &self.world,
                    host_slice::<f32>(&mut send, numel),
                    host_slice::<f32>(&mut block, block_numel),
                ),
                Kind::Double => scatter(
                    &self.world,
                    host_slice::<f64>(&mut send, numel),
                    host_slice::<f64>(&mut block, block_numel),
                ),
                other => {
                    return Err(DistError::UnsupportedTensor {
                        op: "reduce_scatter_sum",
                        expected: "f32 or f64 on the CPU",
                        got: format!("{other:?}"),
                    });
                }
            }
        }
        Ok(block)
    }

    fn backend(&self) -> &'static str {
        "mpi"
    }
}

/// The MPI library this binary runs with, for `mtrec-worker doctor`.
pub fn mpi_library_version() -> String {
    let (major, minor) = mpi::environment::version();
    let library = mpi::environment::library_version().unwrap_or_else(|_| "unknown".into());
    let first_line =
        library.lines().next().unwrap_or("").trim_matches(|c: char| c.is_whitespace() || c == '\0');
    format!("MPI {major}.{minor}: {first_line}")
}

use crate::{Collective, DistError, Placement, check_reducible, check_world_blocks};
use tch::Tensor;

/// A world of one: the mean over one rank is the value itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct Local;

impl Collective for Local {
    fn placement(&self) -> Placement {
        Placement::SINGLE
    }

    /// The identity, on the tensors the multi-rank backends accept (so a single-process run
    /// refuses what a job would).
    fn all_reduce_mean(&self, tensor: &mut Tensor) -> Result<(), DistError> {
        check_reducible("all_reduce_mean", tensor, tensor.device()).map(|_| ())
    }

    fn broadcast(&self, _tensor: &mut Tensor, root: usize) -> Result<(), DistError> {
        if root != 0 {
            return Err(DistError::BadRoot { op: "broadcast", root, world_size: 1 });
        }
        Ok(())
    }

    fn broadcast_bytes(&self, _bytes: &mut Vec<u8>, root: usize) -> Result<(), DistError> {
        if root != 0 {
            return Err(DistError::BadRoot { op: "broadcast_bytes", root, world_size: 1 });
        }
        Ok(())
    }

    fn all_reduce_sum_f64(&self, _values: &mut [f64]) -> Result<(), DistError> {
        Ok(())
    }

    fn all_gather(&self, tensor: &Tensor) -> Result<Tensor, DistError> {
        Ok(tensor.unsqueeze(0))
    }

    fn reduce_scatter_sum(&self, tensor: &Tensor) -> Result<Tensor, DistError> {
        check_world_blocks("reduce_scatter_sum", tensor, 1)?;
        Ok(tensor.get(0))
    }

    fn backend(&self) -> &'static str {
        "local"
    }
}

use crate::{Collective, DistError, Placement};
use tch::Tensor;

/// A world of one: the mean over one rank is the value itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct Local;

impl Collective for Local {
    fn placement(&self) -> Placement {
        Placement::SINGLE
    }

    fn all_reduce_mean(&self, _tensor: &mut Tensor) -> Result<(), DistError> {
        Ok(())
    }

    fn broadcast(&self, _tensor: &mut Tensor, root: usize) -> Result<(), DistError> {
        if root != 0 {
            return Err(DistError::BadRoot { op: "broadcast", root, world_size: 1 });
        }
        Ok(())
    }

    fn all_reduce_sum_f64(&self, _values: &mut [f64]) -> Result<(), DistError> {
        Ok(())
    }

    fn all_gather(&self, tensor: &Tensor) -> Result<Tensor, DistError> {
        Ok(tensor.unsqueeze(0))
    }

    fn backend(&self) -> &'static str {
        "local"
    }
}

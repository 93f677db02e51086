//! A plain run is a world of one, and the toolchain computes gradients (tch forward + backward).
use mtrec_dist::{Collective, Local};
use tch::{Kind, Tensor};

#[test]
fn local_world_is_identity() {
    let mut t = Tensor::from_slice(&[1.5f32, -2.0]);
    Local.all_reduce_mean(&mut t).unwrap();
    assert_eq!(Vec::<f32>::try_from(&t).unwrap(), vec![1.5, -2.0]);
    assert!(Local.broadcast(&mut t, 1).is_err(), "root 1 does not exist in a world of one");
    assert_eq!(Local.placement().world_size, 1);
    // all_gather and reduce_scatter_sum add and remove the leading rank dimension.
    let gathered = Local.all_gather(&t).unwrap();
    assert_eq!(gathered.size(), vec![1, 2]);
    assert_eq!(Vec::<f32>::try_from(&Local.reduce_scatter_sum(&gathered).unwrap()).unwrap(), vec![1.5, -2.0]);
    assert!(Local.reduce_scatter_sum(&t).is_err(), "two blocks in a world of one");
}

#[test]
fn tch_forward_backward_on_cpu() {
    // y = sum(W x) with W 2x3: dy/dW[i][j] = x[j].
    let x = Tensor::from_slice(&[1.0f32, 2.0, 3.0]);
    let w = Tensor::ones([2, 3], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
    let y = w.matmul(&x).sum(Kind::Float);
    y.backward();
    assert_eq!(f64::try_from(&y).unwrap(), 12.0);
    let grad: Vec<f32> = Vec::try_from(w.grad().flatten(0, 1)).unwrap();
    assert_eq!(grad, vec![1.0, 2.0, 3.0, 1.0, 2.0, 3.0]);
}

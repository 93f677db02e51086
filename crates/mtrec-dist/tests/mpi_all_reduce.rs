//! The MPI collective on real ranks: this test re-launches itself under `mpirun -n 2`, and each
//! rank checks the averaged and broadcast values.
use mtrec_dist::{Backend, Job, launched_by_mpi};
use std::process::Command;
use tch::Tensor;

fn rank_body() {
    let job = Job::start().expect("MPI world");
    let collective = job.collective(Backend::Cpu).expect("MPI collective");
    let p = collective.placement();
    assert_eq!(p.world_size, 2, "expected a world of 2");
    assert_eq!(collective.backend(), "mpi");
    let r = p.rank as f32;
    // rank 0 holds [0, 1, 2, 3, 4], rank 1 holds [10, 11, 12, 13, 14]: the mean is [5, 6, ...].
    let mut t = Tensor::arange(5, (tch::Kind::Float, tch::Device::Cpu)) + 10.0 * r as f64;
    collective.all_reduce_mean(&mut t).expect("all-reduce");
    assert_eq!(Vec::<f32>::try_from(&t).unwrap(), vec![5.0, 6.0, 7.0, 8.0, 9.0], "rank {}", p.rank);

    // f64 buffers, and a view into a larger tensor (a contiguous slice at an offset): only the
    // view's elements are reduced.
    let whole = Tensor::from_slice(&[99.0, r as f64 * 2.0 + 1.0, -(r as f64), 99.0]);
    let mut d = whole.narrow(0, 1, 2);
    collective.all_reduce_mean(&mut d).expect("all-reduce f64");
    assert_eq!(Vec::<f64>::try_from(&whole).unwrap(), vec![99.0, 2.0, -0.5, 99.0]);

    let mut b = Tensor::from_slice(&[r + 1.0, r + 2.0]);
    collective.broadcast(&mut b, 1).expect("broadcast");
    assert_eq!(Vec::<f32>::try_from(&b).unwrap(), vec![2.0, 3.0]);

    let mut sums = [r as f64, 1.0];
    collective.all_reduce_sum_f64(&mut sums).expect("sum");
    assert_eq!(sums, [1.0, 2.0]);

    // all_gather stacks the ranks' tensors in rank order.
    let mine = Tensor::from_slice(&[r, r + 0.5]);
    let gathered = collective.all_gather(&mine).expect("all_gather");
    assert_eq!(gathered.size(), vec![2, 2]);
    assert_eq!(Vec::<f32>::try_from(gathered.view([-1])).unwrap(), vec![0.0, 0.5, 1.0, 1.5]);

    // reduce_scatter_sum: rank r holds [[r, 2r], [10 + r, 20 + r]]; rank 0 gets the sum of the
    // first blocks, rank 1 of the second.
    let blocks = Tensor::from_slice(&[r, 2.0 * r, 10.0 + r, 20.0 + r]).view([2, 2]);
    let mine = collective.reduce_scatter_sum(&blocks).expect("reduce_scatter_sum");
    let want = if p.rank == 0 { vec![1.0, 2.0] } else { vec![21.0, 41.0] };
    assert_eq!(Vec::<f32>::try_from(&mine).unwrap(), want, "rank {}", p.rank);
    assert!(
        collective.reduce_scatter_sum(&Tensor::zeros([3, 2], (tch::Kind::Float, tch::Device::Cpu))).is_err()
    );

    // A non-contiguous tensor is refused, not silently reduced wrong.
    let mut strided = Tensor::zeros([3, 2], (tch::Kind::Float, tch::Device::Cpu)).transpose(0, 1);
    assert!(collective.all_reduce_mean(&mut strided).is_err());
}

#[test]
fn two_ranks_average_a_tensor() {
    if launched_by_mpi() {
        rank_body();
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("mpirun")
        .args(["-n", "2", "--oversubscribe", "--allow-run-as-root"])
        .arg(exe)
        .args(["--exact", "two_ranks_average_a_tensor", "--test-threads=1", "--color=never"])
        .output()
        .expect("mpirun must be installed (ci/setup.sh)");
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "2-rank run failed:\n{text}");
    assert_eq!(text.matches("test result: ok. 1 passed").count(), 2, "both ranks must pass:\n{text}");
}

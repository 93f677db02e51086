//! Every collective run with known values (`mtrec-worker check-collectives`): proof that a
//! transport computes what the trainer relies on, on the device the trainer uses. Each rank's
//! inputs are small integers (or halves of them) built from its rank, so every expected result
//! is exact in f32 and bf16, and any difference is an error.
use crate::Collective;
use tch::{Device, Kind, Tensor};

/// One collective's outcome: what it checked, and what was wrong.
#[derive(Debug)]
pub struct CollectiveCheck {
    pub name: &'static str,
    pub outcome: Result<String, String>,
}

/// A check: what it returns when the values are right, and what was wrong otherwise.
type Check<'a> = Box<dyn Fn() -> Result<String, String> + 'a>;

/// Runs every collective of [`Collective`] once on `device` with known values (bf16 on CUDA
/// only).
pub fn check_collectives(collective: &dyn Collective, device: Device) -> Vec<CollectiveCheck> {
    let p = collective.placement();
    let (rank, world) = (p.rank as f64, p.world_size as f64);
    // Over 4 MiB of f32, so that the bucketed MPI path splits it.
    let long = (1 << 20) + 3;
    let pattern =
        |n: usize, f: &dyn Fn(f64) -> f64| (0..n).map(|i| f((i % 7 + 1) as f64)).collect::<Vec<f64>>();
    let checks: [(&'static str, Check); 8] = [
        (
            "all_reduce_mean f32",
            Box::new(|| {
                let mut t = on(&pattern(long, &|k| (rank + 1.0) * k), Kind::Float, device);
                collective.all_reduce_mean(&mut t).map_err(|e| e.to_string())?;
                equal(&t, &pattern(long, &|k| (world + 1.0) / 2.0 * k))
            }),
        ),
        (
            "all_reduce_mean bf16",
            Box::new(|| {
                let mut t = on(&pattern(4099, &|k| (rank + 1.0) * k), Kind::BFloat16, device);
                collective.all_reduce_mean(&mut t).map_err(|e| e.to_string())?;
                equal(&t, &pattern(4099, &|k| (world + 1.0) / 2.0 * k))
            }),
        ),
        (
            "all_reduce_mean_during f32",
            Box::new(|| {
                let mut t = on(&pattern(long, &|k| (rank + 1.0) * k), Kind::Float, device);
                let mut ran = 0;
                collective.all_reduce_mean_during(&mut t, &mut || ran += 1).map_err(|e| e.to_string())?;
                if ran != 1 {
                    return Err(format!("the work ran {ran} times, not once"));
                }
                equal(&t, &pattern(long, &|k| (world + 1.0) / 2.0 * k))
            }),
        ),
        (
            "broadcast f32 from the last rank",
            Box::new(|| {
                let mut t = on(&pattern(1000, &|k| rank * 10.0 + k), Kind::Float, device);
                collective.broadcast(&mut t, p.world_size - 1).map_err(|e| e.to_string())?;
                equal(&t, &pattern(1000, &|k| (world - 1.0) * 10.0 + k))
            }),
        ),
        (
            "all_gather f32",
            Box::new(|| {
                let mine: Vec<f64> = (0..6).map(|j| rank * 100.0 + j as f64).collect();
                let t = on(&mine, Kind::Float, device).view([3, 2]);
                let gathered = collective.all_gather(&t).map_err(|e| e.to_string())?;
                shaped(&gathered, &[p.world_size as i64, 3, 2])?;
                let expected: Vec<f64> = (0..p.world_size)
                    .flat_map(|k| (0..6).map(move |j| k as f64 * 100.0 + j as f64))
                    .collect();
                equal(&gathered, &expected)
            }),
        ),
        (
            "reduce_scatter_sum f32",
            Box::new(|| {
                let blocks: Vec<f64> = (0..p.world_size)
                    .flat_map(|k| (0..5).map(move |j| (rank + 1.0) * (k as f64 + 1.0) + j as f64))
                    .collect();
                let t = on(&blocks, Kind::Float, device).view([p.world_size as i64, 5]);
                let mine = collective.reduce_scatter_sum(&t).map_err(|e| e.to_string())?;
                shaped(&mine, &[5])?;
                // Block `rank`, summed over the ranks s: sum_s (s + 1)(rank + 1) + j.
                let expected: Vec<f64> =
                    (0..5).map(|j| (rank + 1.0) * world * (world + 1.0) / 2.0 + world * j as f64).collect();
                equal(&mine, &expected)
            }),
        ),
        (
            "all_reduce_sum_f64 (host)",
            Box::new(|| {
                let mut values = [rank + 1.0, 0.5];
                collective.all_reduce_sum_f64(&mut values).map_err(|e| e.to_string())?;
                let expected = [world * (world + 1.0) / 2.0, world / 2.0];
                if values == expected {
                    Ok("exact".into())
                } else {
                    Err(format!("{values:?}, expected {expected:?}"))
                }
            }),
        ),
        (
            "broadcast_bytes (host)",
            Box::new(|| {
                let message = b"rank 0's bytes".to_vec();
                let mut bytes = if p.rank == 0 { message.clone() } else { Vec::new() };
                collective.broadcast_bytes(&mut bytes, 0).map_err(|e| e.to_string())?;
                if bytes == message { Ok("exact".into()) } else { Err(format!("got {bytes:?}")) }
            }),
        ),
    ];
    // bf16 gradients are reduced on GPUs only (MPI has no bf16 type).
    let applies = |name: &str| device.is_cuda() || !name.contains("bf16");
    checks
        .into_iter()
        .filter(|(name, _)| applies(name))
        .map(|(name, check)| CollectiveCheck { name, outcome: check() })
        .collect()
}

fn on(values: &[f64], kind: Kind, device: Device) -> Tensor {
    Tensor::from_slice(values).to_kind(kind).to_device(device)
}

fn shaped(t: &Tensor, shape: &[i64]) -> Result<(), String> {
    if t.size() == shape { Ok(()) } else { Err(format!("shape {:?}, expected {shape:?}", t.size())) }
}

/// `exact` when `t` holds `expected`, otherwise where it first differs.
fn equal(t: &Tensor, expected: &[f64]) -> Result<String, String> {
    let got = Vec::<f64>::try_from(t.to_device(Device::Cpu).to_kind(Kind::Double).flatten(0, -1))
        .map_err(|e| e.to_string())?;
    if got.len() != expected.len() {
        return Err(format!("{} values, expected {}", got.len(), expected.len()));
    }
    match got.iter().zip(expected).position(|(a, b)| a != b) {
        None => Ok(format!("exact over {} values", got.len())),
        Some(i) => Err(format!("value {i} is {}, expected {}", got[i], expected[i])),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_world_of_one_passes_every_check() {
        let checks = check_collectives(&crate::Local, Device::Cpu);
        assert_eq!(checks.len(), 7);
        for check in checks {
            assert!(check.outcome.is_ok(), "{}: {:?}", check.name, check.outcome);
        }
    }

    #[test]
    fn a_wrong_value_is_named() {
        let t = Tensor::from_slice(&[1.0f32, 2.0, 4.0]);
        assert_eq!(equal(&t, &[1.0, 2.0, 3.0]).unwrap_err(), "value 2 is 4, expected 3");
    }
}

//! Dropout (Srivastava et al. 2014, "inverted": kept values scaled by `1 / (1 - p)`), with the
//! source of its random keep-masks chosen per device.
//!
//! On CPU, libtorch's `bernoulli_` takes about 8 ns per element on the 2-core development
//! machine, which made dropout a third of a BERT forward pass; here the masks come from
//! xoshiro256++ streams in Rust, filled on every core (about 2 ns per element there), seeded per
//! step, so a resumed run draws the same masks as an uninterrupted one. On CUDA, torch's own
//! kernels (Philox, and SDPA's in-kernel attention dropout) are already fast and keep the masks on
//! the device; they draw from torch's CUDA generator, which is seeded with the same per-step seed
//! (seed, step, rank) at the start of every training forward pass, so there too the masks are a
//! function of the step and a resumed run draws what an uninterrupted one would.
use rand::{RngCore, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use rayon::prelude::*;
use std::cell::RefCell;
use tch::{Device, Kind, Tensor};

/// Where dropout's keep-masks come from for one forward pass.
#[derive(Debug)]
pub enum Dropout {
    /// Evaluation: dropout is the identity.
    Off,
    /// Training on CUDA: torch's dropout kernels.
    Device,
    /// Training on CPU: masks from this seeded stream.
    Host(RefCell<Xoshiro256PlusPlus>),
}

impl Dropout {
    /// Dropout for a training forward pass on `device`; `seed` picks the masks (the CPU
    /// stream's seed, or the CUDA generator's).
    pub fn training(device: Device, seed: u64) -> Self {
        match device {
            Device::Cpu => Dropout::Host(RefCell::new(Xoshiro256PlusPlus::seed_from_u64(seed))),
            _ => {
                tch::Cuda::manual_seed_all(seed);
                Dropout::Device
            }
        }
    }

    /// Zeroes each element of `x` with probability `p` and scales the rest by `1 / (1 - p)`.
    pub fn apply(&self, x: &Tensor, p: f64) -> Tensor {
        match self {
            Dropout::Host(rng) if p > 0.0 => x * keep_mask(&mut rng.borrow_mut(), &x.size(), p),
            Dropout::Device if p > 0.0 => x.dropout(p, true),
            _ => x.shallow_clone(),
        }
    }

    /// Scaled dot-product attention (Vaswani et al. 2017), `softmax(q k^T / sqrt(d_k))` with
    /// dropout `p` on the attention probabilities (as BERT), times `v`. A key where `mask` is
    /// false gets the score `-inf`, so the weight 0 (a padded title's padding,
    /// [`crate::buckets`]); every query row must keep at least one key.
    ///
    /// # Shapes
    /// `q, k, v [n, heads, L, d_k]`, `mask [n, 1, 1, L]` (bool) -> `[n, heads, L, d_k]`.
    pub fn attention(&self, q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>, p: f64) -> Tensor {
        let sdpa = |p| Tensor::scaled_dot_product_attention(q, k, v, mask, p, false, None, false);
        match self {
            Dropout::Host(_) if p > 0.0 => {
                // Scores in q's kind (bf16 under the precision policy), softmax in f32, the
                // probabilities rounded back for the value matmul.
                let d_k = *q.size().last().expect("q has a head dimension") as f64;
                let scores = q.matmul(&k.transpose(-2, -1)) / d_k.sqrt();
                let scores = match mask {
                    Some(mask) => scores.masked_fill(&mask.logical_not(), f64::NEG_INFINITY),
                    None => scores,
                };
                self.apply(&scores.softmax(-1, Kind::Float), p).to_kind(v.kind()).matmul(v)
            }
            Dropout::Device => sdpa(p),
            _ => sdpa(0.0),
        }
    }
}

/// `[shape]` f32 on the CPU: `1 / (1 - p)` where kept (probability `1 - p`, to 2^-32), else 0.
/// Filled in parallel chunks, each from its own stream seeded by `rng`: the same masks whatever
/// the number of threads.
fn keep_mask(rng: &mut Xoshiro256PlusPlus, shape: &[i64], p: f64) -> Tensor {
    const CHUNK: usize = 1 << 16;
    // Keep when a uniform u32 is at least `threshold`: P(drop) = threshold / 2^32.
    let threshold = (p * 4_294_967_296.0).round().min(u32::MAX as f64) as u32;
    let scale = (1.0 / (1.0 - p)) as f32;
    let mask = Tensor::empty(shape, (Kind::Float, Device::Cpu));
    let len = mask.numel();
    if len == 0 {
        return mask; // its data pointer may be null
    }
    // SAFETY: `mask` is a new contiguous CPU f32 tensor of `len` > 0 elements that nothing else
    // references until this function returns it.
    let values = unsafe { std::slice::from_raw_parts_mut(mask.data_ptr() as *mut f32, len) };
    let seeds: Vec<u64> = (0..len.div_ceil(CHUNK)).map(|_| rng.next_u64()).collect();
    values.par_chunks_mut(CHUNK).zip(seeds).for_each(|(chunk, seed)| {
        let mut stream = Xoshiro256PlusPlus::seed_from_u64(seed);
        let keep = |draw: u32| if draw >= threshold { scale } else { 0.0 };
        let mut pairs = chunk.chunks_exact_mut(2);
        for pair in &mut pairs {
            let draws = stream.next_u64();
            pair[0] = keep(draws as u32);
            pair[1] = keep((draws >> 32) as u32);
        }
        if let [last] = pairs.into_remainder() {
            *last = keep(stream.next_u64() as u32);
        }
    });
    mask
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_masks_drop_at_rate_p_keep_the_mean_and_repeat_with_the_seed() {
        let x = Tensor::ones([200_000], (Kind::Float, Device::Cpu));
        let a = Dropout::training(Device::Cpu, 11).apply(&x, 0.1);
        let dropped = a.eq(0.0).to_kind(Kind::Double).mean(Kind::Double).double_value(&[]);
        assert!((dropped - 0.1).abs() < 0.003, "dropped share {dropped}");
        let mean = a.mean(Kind::Double).double_value(&[]);
        assert!((mean - 1.0).abs() < 0.005, "mean {mean}");
        let kept = a.max().double_value(&[]);
        assert!((kept - 1.0 / 0.9).abs() < 1e-6);
        assert!(a.equal(&Dropout::training(Device::Cpu, 11).apply(&x, 0.1)));
        assert!(!a.equal(&Dropout::training(Device::Cpu, 12).apply(&x, 0.1)));
        assert!(Dropout::Off.apply(&x, 0.1).equal(&x));
    }

    #[test]
    fn host_attention_without_dropout_equals_sdpa() {
        tch::manual_seed(1);
        let q = Tensor::randn([3, 2, 5, 4], (Kind::Float, Device::Cpu));
        let k = Tensor::randn([3, 2, 5, 4], (Kind::Float, Device::Cpu));
        let v = Tensor::randn([3, 2, 5, 4], (Kind::Float, Device::Cpu));
        let dropout = Dropout::training(Device::Cpu, 0);
        let Dropout::Host(_) = &dropout else { panic!("CPU training uses host masks") };
        // p = 1e-12 keeps every element (threshold 0) but takes the host path.
        let ours = dropout.attention(&q, &k, &v, None, 1e-12);
        let sdpa = Dropout::Off.attention(&q, &k, &v, None, 0.0);
        let diff = (&ours - &sdpa).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "{diff}");
    }

    /// Titles of 5, 3 and 1 tokens padded to 5: with the key mask, each title's real rows are
    /// attention over that title alone, on SDPA's path and on the host-dropout path.
    #[test]
    fn masked_keys_leave_each_title_its_unpadded_attention() {
        tch::manual_seed(2);
        let lengths = [5i64, 3, 1];
        let qkv = [(); 3].map(|_| Tensor::randn([3, 2, 5, 4], (Kind::Float, Device::Cpu)));
        let mask =
            Tensor::stack(&lengths.map(|len| Tensor::arange(5, (Kind::Int64, Device::Cpu)).lt(len)), 0)
                .view([3, 1, 1, 5]);
        let host = Dropout::training(Device::Cpu, 0);
        let [q, k, v] = &qkv;
        for padded in
            [Dropout::Off.attention(q, k, v, Some(&mask), 0.0), host.attention(q, k, v, Some(&mask), 1e-12)]
        {
            for (i, &len) in lengths.iter().enumerate() {
                let title = |t: &Tensor| t.get(i as i64).narrow(1, 0, len).unsqueeze(0);
                let alone = Dropout::Off.attention(&title(q), &title(k), &title(v), None, 0.0);
                let diff = (title(&padded) - alone).abs().max().double_value(&[]);
                assert!(diff < 1e-5, "title {i}: {diff}");
            }
        }
    }
}

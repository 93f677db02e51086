//! Length buckets: how attention runs over packed titles (`DESIGN.md`, "Performance design").
//!
//! The titles of a batch are packed (every real token once, titles sorted by length), so the
//! linear layers never see padding. Attention mixes the tokens of one title only; it runs once per
//! *bucket*: the titles whose lengths round up to the same padded length ([`BucketPolicy`]), padded
//! to it with zero rows, under a key-padding mask that gives every padded key the weight
//! `exp(-inf) = 0`, the padded query rows dropped afterwards. Each real token's result is so the
//! one of attention over its own title alone (up to float rounding), and their gradients too: a
//! padded row gets a zero gradient and passes none on. A step then launches `layers x buckets`
//! attention calls instead of `layers x distinct lengths` (on MIND's titles of up to 30 tokens, at
//! most 4 instead of up to 30).
//!
//! Per device ([`BucketPolicy::for_device`]): on CUDA, where each call is a few kernel launches
//! the host must keep up with, lengths are padded; on the CPU a call costs little and padding
//! costs (the reference step 3-8% slower padded, evaluation's forward pass 1.2x), so every length
//! is its own bucket and nothing is padded (`docs/benchmarks.md`, "Attention buckets").
use tch::{Device, Tensor};

/// How the lengths of a batch's titles are grouped into attention calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BucketPolicy {
    /// One call per distinct length, nothing padded.
    Exact,
    /// Lengths rounded up by [`padded_length`].
    Padded,
}

impl BucketPolicy {
    /// [`BucketPolicy::Padded`] on CUDA, [`BucketPolicy::Exact`] on the CPU (module
    /// documentation).
    pub fn for_device(device: Device) -> BucketPolicy {
        if device.is_cuda() { BucketPolicy::Padded } else { BucketPolicy::Exact }
    }

    fn bucket_length(self, len: i64) -> i64 {
        match self {
            BucketPolicy::Exact => len,
            BucketPolicy::Padded => padded_length(len),
        }
    }
}

/// `len` (at least 1) rounded up to a multiple of `max(8, 2^floor(log2 len) / 4)`: of 8 up to 64
/// tokens, of 16 up to 128, and so on. At most 4 buckets up to 32 tokens and 4 more per doubling
/// above 32; a title of `L >= 32` tokens is padded by less than `L / 4`.
pub fn padded_length(len: i64) -> i64 {
    let below = 1i64 << (63 - len.max(1).leading_zeros());
    let step = (below / 4).max(8);
    (len + step - 1) / step * step
}

/// Where the attention of a batch's packed tokens runs: its groups of equal-length titles and the
/// buckets they are merged into.
#[derive(Debug)]
pub struct AttentionLayout {
    /// `(titles, length)` of each run of equal-length titles, in packed order.
    pub groups: Vec<(i64, i64)>,
    /// `(titles, padded length)` of each attention call, in packed order.
    pub buckets: Vec<(i64, i64)>,
    /// `None` when no bucket is padded (each bucket is one group at its own length).
    padding: Option<Padding>,
}

/// The padded layout: bucket after bucket, each title at `padded length` rows.
#[derive(Debug)]
struct Padding {
    /// `[T]` int64 row of each packed token in the padded layout.
    rows: Tensor,
    /// Rows of the padded layout, `sum titles x padded length` over the buckets.
    padded_rows: i64,
    /// Per bucket: `[titles, 1, 1, padded length]` bool, true at the titles' real tokens; `None`
    /// for a bucket that pads nothing.
    masks: Vec<Option<Tensor>>,
}

impl AttentionLayout {
    /// One bucket per group, nothing padded.
    pub fn exact(groups: Vec<(i64, i64)>) -> AttentionLayout {
        AttentionLayout::new(groups, BucketPolicy::Exact, Device::Cpu)
    }

    /// The buckets of `groups` (sorted by length, as [`crate::TitleBatch`] packs them) under
    /// `policy`; where one is padded, its row index and key masks go to `device` in one upload.
    pub fn new(groups: Vec<(i64, i64)>, policy: BucketPolicy, device: Device) -> AttentionLayout {
        let mut buckets: Vec<(i64, i64)> = Vec::new();
        for &(n, len) in &groups {
            let padded = policy.bucket_length(len);
            match buckets.last_mut() {
                Some((titles, last)) if *last == padded => *titles += n,
                _ => buckets.push((n, padded)),
            }
        }
        let padded = groups.len() != buckets.len() || groups.iter().zip(&buckets).any(|(g, b)| g.1 != b.1);
        let padding = padded.then(|| Padding::new(&groups, &buckets, device));
        AttentionLayout { groups, buckets, padding }
    }

    /// No titles.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// The padded layout of packed rows: zero rows where titles are padded (the rows themselves
    /// when nothing is).
    ///
    /// # Shapes
    /// `[T, c]` -> `[sum titles x padded length, c]`.
    pub fn pad(&self, packed: &Tensor) -> Tensor {
        match &self.padding {
            None => packed.shallow_clone(),
            Some(p) => {
                let width = packed.size()[1];
                Tensor::zeros([p.padded_rows, width], (packed.kind(), packed.device()))
                    .index_copy(0, &p.rows, packed)
            }
        }
    }

    /// The inverse of [`AttentionLayout::pad`]: the padded rows dropped.
    ///
    /// # Shapes
    /// `[sum titles x padded length, c]` -> `[T, c]`.
    pub fn unpad(&self, padded: &Tensor) -> Tensor {
        match &self.padding {
            None => padded.shallow_clone(),
            Some(p) => padded.index_select(0, &p.rows),
        }
    }

    /// The key mask of bucket `i` (`None` where it pads nothing).
    pub fn mask(&self, i: usize) -> Option<&Tensor> {
        self.padding.as_ref().and_then(|p| p.masks[i].as_ref())
    }
}

impl Padding {
    fn new(groups: &[(i64, i64)], buckets: &[(i64, i64)], device: Device) -> Padding {
        let (mut rows, mut mask) = (Vec::new(), Vec::new());
        // Which buckets pad anything, and where each one's mask starts.
        let mut masked: Vec<Option<(i64, i64, i64)>> = Vec::with_capacity(buckets.len());
        let mut groups = groups.iter().copied();
        let mut start = 0i64;
        for &(titles, padded) in buckets {
            let mut members = Vec::new();
            let mut left = titles;
            while left > 0 {
                let (n, len) = groups.next().expect("the buckets cover the groups");
                members.push((n, len));
                left -= n;
            }
            let pads = members.iter().any(|&(_, len)| len != padded);
            masked.push(pads.then_some((mask.len() as i64, titles, padded)));
            for (n, len) in members {
                for _ in 0..n {
                    rows.extend(start..start + len);
                    if pads {
                        mask.extend((0..padded).map(|j| i64::from(j < len)));
                    }
                    start += padded;
                }
            }
        }
        let [rows, mask] = <[Tensor; 2]>::try_from(crate::upload_i64(&[rows.as_slice(), &mask], device))
            .expect("one tensor per part");
        let mask = mask.gt(0);
        let masks = masked
            .into_iter()
            .map(|m| {
                m.map(|(at, titles, padded)| mask.narrow(0, at, titles * padded).view([titles, 1, 1, padded]))
            })
            .collect();
        Padding { rows, padded_rows: start, masks }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    #[test]
    fn padded_lengths_round_up_to_multiples_of_8_then_a_quarter_of_the_power_of_two() {
        let padded: Vec<i64> =
            [1, 8, 9, 16, 17, 30, 32, 33, 64, 65, 100, 128, 129, 512].map(padded_length).to_vec();
        assert_eq!(padded, vec![8, 8, 16, 16, 24, 32, 32, 40, 64, 80, 112, 128, 160, 512]);
        for len in 1..=512 {
            let p = padded_length(len);
            assert!(p >= len && (len < 32 || p - len < len / 4), "{len} -> {p}");
        }
        // MIND's titles (at most 30 tokens): at most 4 buckets.
        let distinct: std::collections::BTreeSet<i64> = (1..=30).map(padded_length).collect();
        assert_eq!(distinct.len(), 4);
    }

    #[test]
    fn groups_merge_into_buckets_and_only_padding_buckets_get_a_mask() {
        // Lengths 3, 5 (x2) -> bucket 8 (padded); 16 (x2) -> bucket 16 (nothing padded).
        let layout = AttentionLayout::new(vec![(1, 3), (2, 5), (2, 16)], BucketPolicy::Padded, Device::Cpu);
        assert_eq!(layout.buckets, vec![(3, 8), (2, 16)]);
        let p = layout.padding.as_ref().expect("bucket 8 pads");
        assert_eq!(p.padded_rows, 3 * 8 + 2 * 16);
        let rows: Vec<i64> = Vec::try_from(&p.rows).unwrap();
        let expected: Vec<i64> = (0..3).chain(8..13).chain(16..21).chain(24..40).chain(40..56).collect();
        assert_eq!(rows, expected);
        let mask: Vec<bool> = Vec::try_from(layout.mask(0).unwrap().view([-1])).unwrap();
        assert_eq!(layout.mask(0).unwrap().size(), vec![3, 1, 1, 8]);
        let real: Vec<usize> = mask.iter().enumerate().filter(|(_, m)| **m).map(|(i, _)| i).collect();
        assert_eq!(real, vec![0, 1, 2, 8, 9, 10, 11, 12, 16, 17, 18, 19, 20]);
        assert!(layout.mask(1).is_none());
        // pad then unpad is the identity; padded rows are zero.
        let x = Tensor::arange(45 * 2, (Kind::Float, Device::Cpu)).view([-1, 2]) + 1.0;
        let padded = layout.pad(&x);
        assert_eq!(padded.size(), vec![56, 2]);
        assert!(layout.unpad(&padded).equal(&x));
        assert_eq!(padded.ne(0.0).any_dim(1, false).sum(Kind::Int64).int64_value(&[]), 45);
    }

    #[test]
    fn exact_buckets_are_the_groups_and_pad_nothing() {
        let layout = AttentionLayout::new(vec![(1, 3), (2, 5)], BucketPolicy::Exact, Device::Cpu);
        assert_eq!(layout.buckets, layout.groups);
        assert!(layout.padding.is_none() && layout.mask(0).is_none());
        // One group that is already a bucket's length pads nothing either.
        let layout = AttentionLayout::new(vec![(4, 16)], BucketPolicy::Padded, Device::Cpu);
        assert!(layout.padding.is_none());
    }
}

//! Encoding a batch of titles with BERT without paying for padding: titles are grouped into
//! length buckets (sorted by length, a bucket closes when padding would exceed a small share of
//! its tokens), BERT runs once per bucket, and the `[CLS]` vectors are put back in input order.
use crate::bert::BertModel;
use tch::{Device, Kind, Tensor};

/// Padding allowed inside one bucket, as a share of the bucket's real tokens.
const MAX_PADDING_SHARE: f64 = 0.10;

/// Titles of similar length, padded to the longest of them.
#[derive(Debug)]
pub struct Bucket {
    /// `[n, L]` int64 token ids, padded with 0.
    pub input_ids: Tensor,
    /// `[n, L]` bool, true on real tokens; `None` when every title in the bucket has length `L`.
    pub attention_mask: Option<Tensor>,
    /// `[n, L]` int64 NER labels, -1 on special and padding tokens (when labels were given).
    pub ner_labels: Option<Tensor>,
    /// `[n]` int64 position of each title in the caller's order.
    pub rows: Tensor,
}

/// A set of titles grouped into length buckets.
#[derive(Debug)]
pub struct TitleBatch {
    pub buckets: Vec<Bucket>,
    /// `[N]` int64: where the title at input position i sits in the bucket-concatenated order.
    inverse: Tensor,
    pub len: usize,
    /// Real tokens in the batch (for tokens/s).
    pub tokens: usize,
}

/// Groups title indices (sorted by length) into buckets whose padding stays within
/// `MAX_PADDING_SHARE` of their tokens.
fn bucket_ranges(lengths_sorted: &[usize]) -> Vec<std::ops::Range<usize>> {
    let mut ranges = Vec::new();
    let mut start = 0;
    let mut tokens = 0usize;
    for (i, &len) in lengths_sorted.iter().enumerate() {
        // Sorted ascending, so `len` is the longest so far: padding = count * len - tokens.
        let count = i + 1 - start;
        let padded = count * len;
        if count > 1 && (padded - (tokens + len)) as f64 > MAX_PADDING_SHARE * (tokens + len) as f64 {
            ranges.push(start..i);
            start = i;
            tokens = 0;
        }
        tokens += len;
    }
    if start < lengths_sorted.len() {
        ranges.push(start..lengths_sorted.len());
    }
    ranges
}

impl TitleBatch {
    /// # Shapes
    /// `titles[i]`: token ids of title i (`[CLS] ... [SEP]`); `ner[i]` aligned with it.
    pub fn new(titles: &[&[i32]], ner: Option<&[&[i8]]>, device: Device) -> Self {
        let mut order: Vec<usize> = (0..titles.len()).collect();
        order.sort_by_key(|&i| (titles[i].len(), i));
        let lengths: Vec<usize> = order.iter().map(|&i| titles[i].len().max(1)).collect();
        let mut buckets = Vec::new();
        for range in bucket_ranges(&lengths) {
            let members = &order[range.clone()];
            let width = lengths[range.end - 1];
            let n = members.len();
            let mut ids = vec![0i64; n * width];
            let mut mask = vec![false; n * width];
            let mut labels = vec![-1i64; n * width];
            for (row, &i) in members.iter().enumerate() {
                for (col, &id) in titles[i].iter().enumerate() {
                    ids[row * width + col] = id as i64;
                    mask[row * width + col] = true;
                }
                if let Some(ner) = ner {
                    for (col, &tag) in ner[i].iter().enumerate() {
                        labels[row * width + col] = tag as i64;
                    }
                }
            }
            let shape = [n as i64, width as i64];
            let padded = members.iter().any(|&i| titles[i].len() < width);
            buckets.push(Bucket {
                input_ids: Tensor::from_slice(&ids).view(shape).to_device(device),
                attention_mask: padded.then(|| Tensor::from_slice(&mask).view(shape).to_device(device)),
                ner_labels: ner.map(|_| Tensor::from_slice(&labels).view(shape).to_device(device)),
                rows: Tensor::from_slice(&members.iter().map(|&i| i as i64).collect::<Vec<_>>())
                    .to_device(device),
            });
        }
        let mut inverse = vec![0i64; titles.len()];
        for (position, &i) in order.iter().enumerate() {
            inverse[i] = position as i64;
        }
        TitleBatch {
            buckets,
            inverse: Tensor::from_slice(&inverse).to_device(device),
            len: titles.len(),
            tokens: titles.iter().map(|t| t.len()).sum(),
        }
    }
}

/// BERT outputs for a [`TitleBatch`].
#[derive(Debug)]
pub struct EncodedTitles {
    /// `[N, d]` final `[CLS]` state of each title, in input order.
    pub cls: Tensor,
    /// Per bucket, `[n, L, d]` final states of every token (for token-level heads).
    pub tokens: Vec<Tensor>,
}

/// Runs BERT bucket by bucket.
///
/// # Shapes
/// `N` titles -> `cls [N, d]`, `tokens[b] [n_b, L_b, d]`.
pub fn encode_titles(bert: &BertModel, titles: &TitleBatch, train: bool) -> EncodedTitles {
    let tokens: Vec<Tensor> = titles
        .buckets
        .iter()
        .map(|b| bert.forward_t(&b.input_ids, b.attention_mask.as_ref(), train))
        .collect();
    let cls_sorted = Tensor::cat(&tokens.iter().map(|t| t.select(1, 0)).collect::<Vec<_>>(), 0);
    EncodedTitles { cls: cls_sorted.index_select(0, &titles.inverse), tokens }
}

/// NER loss: per-token cross-entropy over the tokens with a label (-1 = ignored), each title
/// weighted by how often it occurs in the batch, summed over buckets and divided by
/// `denominator` (the labelled token occurrences the mean is over).
///
/// # Shapes
/// `logits_per_bucket[b] [n_b, L_b, T]`, `weights [N]` (float, input order) -> scalar.
pub fn token_cross_entropy(
    logits_per_bucket: &[Tensor],
    titles: &TitleBatch,
    weights: &Tensor,
    denominator: f64,
) -> Tensor {
    let sums: Vec<Tensor> = logits_per_bucket
        .iter()
        .zip(&titles.buckets)
        .map(|(logits, bucket)| {
            let labels = bucket.ner_labels.as_ref().expect("token loss needs NER labels in the TitleBatch");
            let (n, l, t) = logits.size3().expect("[n, L, T]");
            let per_token = logits
                .view([-1, t])
                .cross_entropy_loss::<Tensor>(&labels.view([-1]), None, tch::Reduction::None, -1, 0.0)
                .view([n, l]);
            (per_token * weights.index_select(0, &bucket.rows).unsqueeze(1)).sum(Kind::Float)
        })
        .collect();
    Tensor::stack(&sums, 0).sum(Kind::Float) / denominator
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_title_once_with_little_padding() {
        let lengths: Vec<usize> = (0..440).map(|i| 12 + (i * 7919) % 19).collect();
        let mut sorted = lengths.clone();
        sorted.sort();
        let ranges = bucket_ranges(&sorted);
        assert_eq!(ranges.iter().map(|r| r.len()).sum::<usize>(), 440);
        for r in &ranges {
            let real: usize = sorted[r.clone()].iter().sum();
            let padded = r.len() * sorted[r.end - 1];
            assert!((padded - real) as f64 <= MAX_PADDING_SHARE * real as f64 + 1e-9, "{r:?}");
        }
        // Far fewer buckets than titles: BERT runs a handful of times, not 440.
        assert!(ranges.len() <= 20, "{} buckets", ranges.len());
    }

    #[test]
    fn title_batch_restores_input_order() {
        let titles: Vec<Vec<i32>> =
            vec![vec![101, 5, 6, 102], vec![101, 102], vec![101, 7, 8, 9, 10, 11, 102]];
        let refs: Vec<&[i32]> = titles.iter().map(|t| t.as_slice()).collect();
        let batch = TitleBatch::new(&refs, None, Device::Cpu);
        // Concatenating each bucket's first tokens then applying `inverse` gives input order.
        let firsts =
            Tensor::cat(&batch.buckets.iter().map(|b| b.input_ids.select(1, 1)).collect::<Vec<_>>(), 0);
        let restored: Vec<i64> = Vec::try_from(firsts.index_select(0, &batch.inverse)).unwrap();
        assert_eq!(restored, vec![5, 102, 7]);
        assert_eq!(batch.tokens, 13);
    }
}

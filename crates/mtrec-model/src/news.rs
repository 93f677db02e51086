//! Encoding a batch of titles with BERT without paying for padding: the tokens of all titles are
//! packed into one sequence, titles grouped by length, so BERT's linear layers run once over
//! every real token and attention runs per length bucket ([`crate::buckets`]; `DESIGN.md`,
//! "Performance design").
use crate::bert::{BertInput, BertModel};
use crate::buckets::{AttentionLayout, BucketPolicy};
use crate::dropout::Dropout;
use tch::{Device, Kind, Tensor};

/// A set of titles, packed.
#[derive(Debug)]
pub struct TitleBatch {
    /// `[T]` int64 token ids: titles sorted by length (stable), each title's tokens contiguous.
    pub input_ids: Tensor,
    /// `[T]` int64 position of each token in its title.
    pub positions: Tensor,
    /// The runs of equal-length titles (`layout.groups`) and the length buckets attention runs in.
    pub layout: AttentionLayout,
    /// `[N]` int64 packed row of each title's first token (`[CLS]`), in input order.
    pub cls_rows: Tensor,
    /// `[T - N]` int64 packed rows of every other token.
    pub token_rows: Tensor,
    /// `[T - N]` int64 input position of the title of each token in `token_rows`.
    pub token_titles: Tensor,
    /// `[T - N]` int64 NER label of each token in `token_rows` (-1 = ignored), when given.
    pub ner_labels: Option<Tensor>,
    /// Number of titles `N`.
    pub len: usize,
    /// Real tokens in the batch `T` (for tokens/s).
    pub tokens: usize,
    /// Input index of each title in packed order (where a frozen-layer cache reads its rows).
    pub order: Vec<usize>,
    /// The frozen lower layers' states of the packed tokens, when a frozen-layer cache gave them:
    /// BERT then starts from them.
    pub lower: Option<LowerStates>,
}

/// `[T, d]` hidden states of a [`TitleBatch`]'s packed tokens after the embeddings and layers
/// `..first_layer` ([`BertModel::lower_states`]).
#[derive(Debug)]
pub struct LowerStates {
    pub states: Tensor,
    pub first_layer: usize,
}

impl TitleBatch {
    /// [`TitleBatch::with_buckets`] with the buckets of `device` ([`BucketPolicy::for_device`]).
    ///
    /// # Shapes
    /// `titles[i]`: token ids of title i (`[CLS] ... [SEP]`); `ner[i]` aligned with it. An empty
    /// title is encoded as the single token 0.
    pub fn new(titles: &[&[i32]], ner: Option<&[&[i8]]>, device: Device) -> Self {
        TitleBatch::with_buckets(titles, ner, device, BucketPolicy::for_device(device))
    }

    /// The titles packed on `device` (one upload), attention in the length buckets of `policy`.
    pub fn with_buckets(
        titles: &[&[i32]],
        ner: Option<&[&[i8]]>,
        device: Device,
        policy: BucketPolicy,
    ) -> Self {
        const EMPTY: &[i32] = &[0];
        let title = |i: usize| if titles[i].is_empty() { EMPTY } else { titles[i] };
        let mut order: Vec<usize> = (0..titles.len()).collect();
        order.sort_by_key(|&i| title(i).len());
        let mut groups: Vec<(i64, i64)> = Vec::new();
        let (mut ids, mut positions) = (Vec::new(), Vec::new());
        let mut cls_rows = vec![0i64; titles.len()];
        let (mut token_rows, mut token_titles, mut labels) = (Vec::new(), Vec::new(), Vec::new());
        for &i in &order {
            let tokens = title(i);
            let len = tokens.len() as i64;
            match groups.last_mut() {
                Some((n, l)) if *l == len => *n += 1,
                _ => groups.push((1, len)),
            }
            let start = ids.len() as i64;
            cls_rows[i] = start;
            ids.extend(tokens.iter().map(|&id| id as i64));
            positions.extend(0..len);
            token_rows.extend(start + 1..start + len);
            token_titles.extend(std::iter::repeat_n(i as i64, tokens.len() - 1));
            if let Some(ner) = ner {
                labels.extend((1..tokens.len()).map(|col| ner[i].get(col).map_or(-1, |&tag| tag as i64)));
            }
        }
        let mut parts = vec![ids.as_slice(), &positions, &cls_rows, &token_rows, &token_titles];
        if ner.is_some() {
            parts.push(&labels);
        }
        let mut tensors = crate::upload_i64(&parts, device).into_iter();
        let mut next = || tensors.next().expect("one tensor per part");
        TitleBatch {
            input_ids: next(),
            positions: next(),
            cls_rows: next(),
            token_rows: next(),
            token_titles: next(),
            ner_labels: ner.map(|_| next()),
            layout: AttentionLayout::new(groups, policy, device),
            len: titles.len(),
            tokens: titles.iter().map(|t| t.len()).sum(),
            order,
            lower: None,
        }
    }
}

/// BERT outputs for a [`TitleBatch`].
#[derive(Debug)]
pub struct EncodedTitles {
    /// `[N, d]` final `[CLS]` state of each title, in input order.
    pub cls: Tensor,
    /// `[T - N, d]` final states of the other tokens (rows of `token_rows`), when asked for.
    pub tokens: Option<Tensor>,
}

/// Runs BERT over the packed titles (from their frozen-layer states when they carry them); the
/// other tokens' final states only `with_tokens` (for token-level heads). `quiet_layers`: the
/// embeddings and that many lower layers run without dropout ([`BertModel::forward`]).
pub fn encode_titles(
    bert: &BertModel,
    titles: &TitleBatch,
    with_tokens: bool,
    dropout: &Dropout,
    quiet_layers: usize,
) -> EncodedTitles {
    let read: Vec<&Tensor> =
        if with_tokens { vec![&titles.cls_rows, &titles.token_rows] } else { vec![&titles.cls_rows] };
    let input = match &titles.lower {
        Some(lower) => BertInput::States { states: &lower.states, first_layer: lower.first_layer },
        None => BertInput::Tokens { input_ids: &titles.input_ids, positions: &titles.positions },
    };
    let mut states = bert.forward(input, &titles.layout, &read, dropout, quiet_layers).into_iter();
    EncodedTitles { cls: states.next().expect("one result per index set"), tokens: states.next() }
}

/// NER loss: per-token cross-entropy over the tokens with a label (-1 = ignored), each title
/// weighted by how often it occurs in the batch, summed and divided by `denominator`: the news
/// occurrences `I` for the paper's `L_NER = -(1/I) sum_i sum_l sum_k p log p_hat` (summed over a
/// title's tokens, averaged over news), or the labelled token occurrences for a per-token mean.
///
/// # Shapes
/// `logits [T - N, tags]` (rows of `titles.token_rows`), `weights [N]` (float, input order) -> scalar.
pub fn token_cross_entropy(
    logits: &Tensor,
    titles: &TitleBatch,
    weights: &Tensor,
    denominator: f64,
) -> Tensor {
    let labels = titles.ner_labels.as_ref().expect("token loss needs NER labels in the TitleBatch");
    let per_token = logits.cross_entropy_loss::<Tensor>(labels, None, tch::Reduction::None, -1, 0.0);
    (per_token * weights.index_select(0, &titles.token_titles)).sum(Kind::Float) / denominator
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_groups_titles_by_length_and_keeps_input_order() {
        let titles: Vec<Vec<i32>> =
            vec![vec![101, 5, 6, 102], vec![101, 102], vec![101, 7, 8, 9, 10, 11, 102], vec![101, 3, 4, 102]];
        let ner: Vec<Vec<i8>> =
            vec![vec![-1, 1, 2, -1], vec![-1, -1], vec![-1, 0, 0, 1, 2, 0, -1], vec![-1, 0, 1, -1]];
        let refs: Vec<&[i32]> = titles.iter().map(|t| t.as_slice()).collect();
        let tags: Vec<&[i8]> = ner.iter().map(|t| t.as_slice()).collect();
        let batch = TitleBatch::new(&refs, Some(&tags), Device::Cpu);
        assert_eq!(batch.layout.groups, vec![(1, 2), (2, 4), (1, 7)]);
        let ids: Vec<i64> = Vec::try_from(&batch.input_ids).unwrap();
        assert_eq!(ids, vec![101, 102, 101, 5, 6, 102, 101, 3, 4, 102, 101, 7, 8, 9, 10, 11, 102]);
        let positions: Vec<i64> = Vec::try_from(&batch.positions).unwrap();
        assert_eq!(&positions[..6], &[0, 1, 0, 1, 2, 3]);
        // Each title's [CLS] row, in input order; every other token once, with its title and label.
        let cls: Vec<i64> = Vec::try_from(&batch.cls_rows).unwrap();
        assert_eq!(cls, vec![2, 0, 10, 6]);
        let rows: Vec<i64> = Vec::try_from(&batch.token_rows).unwrap();
        assert_eq!(rows.len() + cls.len(), ids.len());
        let owners: Vec<i64> = Vec::try_from(&batch.token_titles).unwrap();
        let labels: Vec<i64> = Vec::try_from(batch.ner_labels.as_ref().unwrap()).unwrap();
        for ((&row, &title), &label) in rows.iter().zip(&owners).zip(&labels) {
            let col = (row - cls[title as usize]) as usize;
            assert_eq!(ids[row as usize], titles[title as usize][col] as i64);
            assert_eq!(label, ner[title as usize][col] as i64);
        }
        assert_eq!(batch.tokens, 17);
    }

    /// Uniform logits over 3 tags: ln 3 per labelled token. Title 0 has 2 labelled tokens and
    /// occurs once, title 1 has 1 and occurs twice: 4 ln 3 summed over 3 news occurrences (the
    /// paper's per-news loss) or over 4 labelled token occurrences (the per-token mean).
    #[test]
    fn ner_loss_sums_a_titles_tokens_and_divides_by_the_denominator() {
        let titles: Vec<Vec<i32>> = vec![vec![101, 5, 6, 102], vec![101, 7, 102]];
        let ner: Vec<Vec<i8>> = vec![vec![-1, 1, 2, -1], vec![-1, 0, -1]];
        let refs: Vec<&[i32]> = titles.iter().map(|t| t.as_slice()).collect();
        let tags: Vec<&[i8]> = ner.iter().map(|t| t.as_slice()).collect();
        let batch = TitleBatch::new(&refs, Some(&tags), Device::Cpu);
        let logits = Tensor::zeros([5, 3], (Kind::Float, Device::Cpu));
        let weights = Tensor::from_slice(&[1.0f32, 2.0]);
        let ln3 = 3f64.ln();
        let per_news = token_cross_entropy(&logits, &batch, &weights, 3.0).double_value(&[]);
        assert!((per_news - 4.0 * ln3 / 3.0).abs() < 1e-6, "{per_news}");
        let per_token = token_cross_entropy(&logits, &batch, &weights, 4.0).double_value(&[]);
        assert!((per_token - ln3).abs() < 1e-6, "{per_token}");
    }

    fn tiny_bert(vs: &tch::nn::VarStore) -> BertModel {
        BertModel::new(&vs.root(), &crate::BertConfig::tiny_for_tests(1))
    }

    #[test]
    fn an_empty_set_of_titles_encodes_to_no_vectors() {
        let vs = tch::nn::VarStore::new(Device::Cpu);
        let bert = tiny_bert(&vs);
        let batch = TitleBatch::new(&[], Some(&[]), Device::Cpu);
        let encoded = encode_titles(&bert, &batch, true, &Dropout::training(Device::Cpu, 0), 0);
        assert_eq!(encoded.cls.size(), vec![0, 8]);
        assert_eq!(encoded.tokens.unwrap().size(), vec![0, 8]);
    }

    /// Titles of 1-13 tokens: in padded buckets (lengths up to 8 in one, 9-16 in another) BERT
    /// gives every token the state and every weight the gradient it has with one unpadded call
    /// per length.
    #[test]
    fn padded_buckets_give_the_states_and_gradients_of_unpadded_attention() {
        tch::manual_seed(5);
        let titles: Vec<Vec<i32>> =
            (0..30).map(|i| (0..1 + (i * 7) % 13).map(|t| 1 + (i * 5 + t * 3) % 40).collect()).collect();
        let ner: Vec<Vec<i8>> = titles.iter().map(|t| t.iter().map(|&id| (id % 3) as i8).collect()).collect();
        let refs: Vec<&[i32]> = titles.iter().map(|t| t.as_slice()).collect();
        let tags: Vec<&[i8]> = ner.iter().map(|t| t.as_slice()).collect();
        let vs = tch::nn::VarStore::new(Device::Cpu);
        let bert = BertModel::new(&vs.root(), &crate::BertConfig::tiny_for_tests(2));
        let head = Tensor::randn([8], (Kind::Float, Device::Cpu));
        let run = |policy| {
            let batch = TitleBatch::with_buckets(&refs, Some(&tags), Device::Cpu, policy);
            let encoded = encode_titles(&bert, &batch, true, &Dropout::Off, 0);
            let tokens = encoded.tokens.expect("asked for token states");
            let loss = (&encoded.cls * &head).sum(Kind::Float) + (&tokens * &head).square().sum(Kind::Float);
            let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
            vars.sort_by(|a, b| a.0.cmp(&b.0));
            let tensors: Vec<&Tensor> = vars.iter().map(|(_, t)| t).collect();
            let grads: Vec<(String, Tensor)> = vars
                .iter()
                .map(|(name, _)| name.clone())
                .zip(Tensor::run_backward(&[loss], &tensors, false, false))
                .collect();
            (batch.layout.buckets.len(), encoded.cls, tokens, grads)
        };
        let (exact_calls, cls, tokens, grads) = run(BucketPolicy::Exact);
        let (padded_calls, padded_cls, padded_tokens, padded_grads) = run(BucketPolicy::Padded);
        assert_eq!((exact_calls, padded_calls), (13, 2));
        // Relative to the largest value of its kind (the sums run in another order; the key
        // bias's gradient is 0 up to rounding, softmax being blind to a score added to a row).
        let max = |t: &Tensor| t.abs().max().double_value(&[]);
        let close = |a: &Tensor, b: &Tensor, scale: f64, what: &str| {
            let diff = max(&(a - b)) / scale;
            assert!(diff < 1e-5, "{what}: relative difference {diff:.3e}");
        };
        close(&cls, &padded_cls, max(&cls), "[CLS] states");
        close(&tokens, &padded_tokens, max(&tokens), "token states");
        let scale = grads.iter().map(|(_, g)| max(g)).fold(0.0, f64::max);
        assert_eq!(grads.len(), vs.variables().len());
        for ((name, g), (_, padded)) in grads.iter().zip(&padded_grads) {
            close(g, padded, scale, name);
        }
    }

    /// A one-token title (an empty one is encoded as token 0) has a `[CLS]` state and no other.
    #[test]
    fn one_token_titles_have_a_cls_state_and_no_token_states() {
        let vs = tch::nn::VarStore::new(Device::Cpu);
        let bert = tiny_bert(&vs);
        let titles: [&[i32]; 3] = [&[], &[1, 5, 2], &[7]];
        let ner: [&[i8]; 3] = [&[], &[-1, 1, -1], &[-1]];
        let batch = TitleBatch::new(&titles, Some(&ner), Device::Cpu);
        let encoded = encode_titles(&bert, &batch, true, &Dropout::training(Device::Cpu, 0), 0);
        assert_eq!(encoded.cls.size(), vec![3, 8]);
        let tokens = encoded.tokens.unwrap();
        assert_eq!(tokens.size(), vec![2, 8]);
        (encoded.cls.sum(Kind::Float) + tokens.sum(Kind::Float)).backward();
    }
}

//! User encoders over the history's news vectors: additive attention (the paper's), NRMS and
//! LSTUR. All are masked: padded history slots never contribute, and an empty history yields a
//! defined vector (zeros, or the user embedding for LSTUR-ini), never NaN.
use serde::{Deserialize, Serialize};
use tch::{Tensor, nn, nn::Module};

/// Large negative score for masked slots (finite, so an all-masked row stays finite).
const MASKED: f64 = -1e9;

/// Additive attention pooling (MTRec eq. for the user encoder; Wu et al. 2019):
/// `a_i = q^T tanh(W r_i + b)`, `alpha = softmax(a)` over unmasked slots, `r = sum_i alpha_i r_i`.
#[derive(Debug)]
pub struct AdditiveAttention {
    proj: nn::Linear,
    query: Tensor,
}

impl AdditiveAttention {
    pub fn new(p: &nn::Path, dim: i64, hidden: i64) -> Self {
        AdditiveAttention {
            proj: nn::linear(p / "proj", dim, hidden, Default::default()),
            query: p.var("query", &[hidden], nn::Init::Uniform { lo: -0.1, up: 0.1 }),
        }
    }

    /// # Shapes
    /// `x [B, n, d]`, `mask [B, n]` (bool, true = real slot) -> `[B, d]`; rows with no real slot
    /// give zeros.
    pub fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Tensor {
        let scores = self.proj.forward(x).tanh().matmul(&self.query); // [B, n]
        let alpha = match mask {
            Some(mask) => scores.masked_fill(&mask.logical_not(), MASKED).softmax(-1, x.kind()) * mask,
            None => scores.softmax(-1, x.kind()),
        };
        alpha.unsqueeze(1).bmm(x).squeeze_dim(1)
    }
}

/// Multi-head self-attention over the history (NRMS, Wu et al. 2019), masked on padded slots.
#[derive(Debug)]
pub struct SelfAttention {
    query: nn::Linear,
    key: nn::Linear,
    value: nn::Linear,
    heads: i64,
}

impl SelfAttention {
    pub fn new(p: &nn::Path, dim: i64, heads: i64) -> Self {
        SelfAttention {
            query: nn::linear(p / "query", dim, dim, Default::default()),
            key: nn::linear(p / "key", dim, dim, Default::default()),
            value: nn::linear(p / "value", dim, dim, Default::default()),
            heads,
        }
    }

    /// # Shapes
    /// `x [B, n, d]`, `mask [B, n]` -> `[B, n, d]`.
    pub fn forward(&self, x: &Tensor, mask: &Tensor) -> Tensor {
        let (b, n, d) = x.size3().expect("[B, n, d]");
        let split = |t: Tensor| t.view([b, n, self.heads, d / self.heads]).transpose(1, 2);
        let (q, k, v) =
            (split(self.query.forward(x)), split(self.key.forward(x)), split(self.value.forward(x)));
        // Additive float mask (finite), so a history with no real slot attends uniformly to zeros.
        let bias = Tensor::zeros([b, 1, 1, n], (x.kind(), x.device()))
            .masked_fill(&mask.logical_not().view([b, 1, 1, n]), MASKED);
        Tensor::scaled_dot_product_attention(&q, &k, &v, Some(bias), 0.0, false, None, false)
            .transpose(1, 2)
            .reshape([b, n, d])
    }
}

/// LSTUR's two ways of combining the long-term user embedding with the GRU's short-term state
/// (An et al. 2019).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LsturMode {
    /// The user embedding initialises the GRU state; the final state is the user vector.
    Ini,
    /// The final GRU state (from zeros) and the user embedding are concatenated and projected.
    Con,
}

/// Which user encoder a model uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum UserEncoderKind {
    /// The paper's additive attention over history vectors.
    Additive,
    /// Multi-head self-attention, then additive attention.
    Nrms,
    /// GRU over the history with a user-ID embedding.
    Lstur { mode: LsturMode },
}

/// A GRU cell (Cho et al. 2014) with explicit gates, so a masked step can keep the old state.
#[derive(Debug)]
pub struct GruCell {
    input: nn::Linear,
    hidden: nn::Linear,
}

impl GruCell {
    fn new(p: &nn::Path, dim: i64) -> Self {
        GruCell {
            input: nn::linear(p / "input", dim, 3 * dim, Default::default()),
            hidden: nn::linear(p / "hidden", dim, 3 * dim, Default::default()),
        }
    }

    /// `r = s(W_r x + U_r h)`, `z = s(W_z x + U_z h)`, `n = tanh(W_n x + r * (U_n h))`,
    /// `h' = (1 - z) n + z h`.
    fn step(&self, x: &Tensor, h: &Tensor) -> Tensor {
        let gi = self.input.forward(x).chunk(3, -1);
        let gh = self.hidden.forward(h).chunk(3, -1);
        let r = (&gi[0] + &gh[0]).sigmoid();
        let z = (&gi[1] + &gh[1]).sigmoid();
        let n = (&gi[2] + r * &gh[2]).tanh();
        (1.0 - &z) * n + z * h
    }
}

/// The user encoder chosen by the config.
#[derive(Debug)]
pub enum UserEncoder {
    Additive(AdditiveAttention),
    Nrms { self_attention: SelfAttention, pooling: AdditiveAttention },
    Lstur { mode: LsturMode, users: nn::Embedding, gru: GruCell, combine: Option<nn::Linear> },
}

impl UserEncoder {
    /// `num_users` counts user ids 1..=num_users (0 = unknown user); only LSTUR uses it.
    pub fn new(p: &nn::Path, kind: UserEncoderKind, dim: i64, heads: i64, num_users: i64) -> Self {
        let attention_hidden = 200.min(dim);
        match kind {
            UserEncoderKind::Additive => {
                UserEncoder::Additive(AdditiveAttention::new(p, dim, attention_hidden))
            }
            UserEncoderKind::Nrms => UserEncoder::Nrms {
                self_attention: SelfAttention::new(&(p / "self_attention"), dim, heads),
                pooling: AdditiveAttention::new(&(p / "pooling"), dim, attention_hidden),
            },
            UserEncoderKind::Lstur { mode } => UserEncoder::Lstur {
                mode,
                users: nn::embedding(p / "users", num_users + 1, dim, Default::default()),
                gru: GruCell::new(&(p / "gru"), dim),
                combine: (mode == LsturMode::Con)
                    .then(|| nn::linear(p / "combine", 2 * dim, dim, Default::default())),
            },
        }
    }

    /// # Shapes
    /// `history [B, H, d]` (oldest first), `mask [B, H]` (bool), `users [B]` (int64) -> `[B, d]`.
    pub fn forward(&self, history: &Tensor, mask: &Tensor, users: &Tensor) -> Tensor {
        match self {
            UserEncoder::Additive(attention) => attention.forward(history, Some(mask)),
            UserEncoder::Nrms { self_attention, pooling } => {
                pooling.forward(&self_attention.forward(history, mask), Some(mask))
            }
            UserEncoder::Lstur { mode, users: table, gru, combine } => {
                let long_term = table.forward(users);
                let mut h = match mode {
                    LsturMode::Ini => long_term.shallow_clone(),
                    LsturMode::Con => long_term.zeros_like(),
                };
                let keep = mask.to_kind(history.kind()).unsqueeze(-1); // [B, H, 1]
                for t in 0..history.size()[1] {
                    let m = keep.select(1, t);
                    let next = gru.step(&history.select(1, t), &h);
                    h = &m * next + (1.0 - &m) * h;
                }
                match combine {
                    Some(linear) => linear.forward(&Tensor::cat(&[h, long_term], -1)),
                    None => h,
                }
            }
        }
    }
}

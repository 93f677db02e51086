//! User encoders over the history's news vectors: additive attention (the paper's), NRMS and
//! LSTUR. All are masked: padded history slots never contribute (whatever vectors sit in them),
//! and an empty history yields a defined vector (zeros, or for LSTUR the long-term part alone),
//! never NaN.
use crate::dropout::Dropout;
use serde::{Deserialize, Deserializer, Serialize};
use tch::{Kind, Tensor, nn, nn::Module};

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
        self.weights(x, mask).unsqueeze(1).bmm(x).squeeze_dim(1)
    }

    /// The attention weights `alpha`: exactly 0 on masked slots, summing to 1 over the real
    /// slots of each row (all 0 for a row with none).
    ///
    /// # Shapes
    /// `x [B, n, d]`, `mask [B, n]` -> `[B, n]`.
    pub fn weights(&self, x: &Tensor, mask: Option<&Tensor>) -> Tensor {
        let scores = self.proj.forward(x).tanh().matmul(&self.query); // [B, n]
        match mask {
            Some(mask) => scores.masked_fill(&mask.logical_not(), MASKED).softmax(-1, x.kind()) * mask,
            None => scores.softmax(-1, x.kind()),
        }
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

/// LSTUR's two ways of combining the long-term user representation `u_l` (a user-ID embedding)
/// with the short-term one `u_s` (a GRU over the history's news vectors), An et al. 2019,
/// "Neural News Recommendation with Long- and Short-term User Representations", Sec. 3.3.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LsturMode {
    /// LSTUR-ini (the default): `u_l` initialises the GRU's hidden state; the GRU's last state
    /// is the user vector. The GRU state and `u_l` are `d` wide.
    #[default]
    Ini,
    /// LSTUR-con: `u = [u_s; u_l]`, the GRU's last state (started from zeros) concatenated with
    /// `u_l`, with no layer after it (the paper's concatenation). Our reading of the widths: the
    /// click predictor is `r^c . u` with `d`-wide news vectors, so the GRU state and the user
    /// embedding are each `d / 2` wide and `u` is `d`; `d` must be even.
    Con,
}

/// Default probability of masking the long-term user representation in training (LSTUR's `p`).
pub const DEFAULT_LSTUR_MASK_PROB: f64 = 0.5;

fn default_mask_prob() -> f64 {
    DEFAULT_LSTUR_MASK_PROB
}

/// Reads `mask_prob`, rejecting values outside `[0, 1)` (1 would train without the long-term
/// representation that evaluation then uses).
fn mask_prob_in_range<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    let p = f64::deserialize(deserializer)?;
    if (0.0..1.0).contains(&p) {
        Ok(p)
    } else {
        Err(serde::de::Error::custom(format!("lstur mask_prob = {p} must be at least 0 and below 1")))
    }
}

/// Which user encoder a model uses.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind", deny_unknown_fields)]
pub enum UserEncoderKind {
    /// The paper's additive attention over history vectors.
    Additive,
    /// Multi-head self-attention, then additive attention.
    Nrms,
    /// LSTUR (An et al. 2019): GRU over the history with a user-ID embedding.
    /// `{ kind = "lstur", mode = "ini" | "con", mask_prob = 0.5 }`; `mode` defaults to `ini`.
    Lstur {
        #[serde(default)]
        mode: LsturMode,
        /// The paper's long-term masking: in training each sample's long-term representation
        /// `u_l` is replaced by zeros with probability `mask_prob` (a 0/1 Bernoulli mask, not
        /// rescaled, as the paper writes `u_l = M * W_u[u]`, `M ~ B(1, 1 - p)`); never at
        /// evaluation. In `[0, 1)` in a config (default 0.5); the encoder itself also accepts 1
        /// (always masked in training).
        #[serde(default = "default_mask_prob", deserialize_with = "mask_prob_in_range")]
        mask_prob: f64,
    },
}

impl UserEncoderKind {
    /// LSTUR in `mode` with the default mask probability.
    pub fn lstur(mode: LsturMode) -> Self {
        UserEncoderKind::Lstur { mode, mask_prob: DEFAULT_LSTUR_MASK_PROB }
    }
}

/// A GRU cell (Cho et al. 2014) with explicit gates, so a masked step can keep the old state.
#[derive(Debug)]
pub struct GruCell {
    input: nn::Linear,
    hidden: nn::Linear,
}

impl GruCell {
    fn new(p: &nn::Path, input_dim: i64, hidden_dim: i64) -> Self {
        GruCell {
            input: nn::linear(p / "input", input_dim, 3 * hidden_dim, Default::default()),
            hidden: nn::linear(p / "hidden", hidden_dim, 3 * hidden_dim, Default::default()),
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

/// LSTUR's parts.
#[derive(Debug)]
pub struct Lstur {
    pub mode: LsturMode,
    pub mask_prob: f64,
    /// `[num_users + 1, d]` (ini) or `[num_users + 1, d / 2]` (con). Row 0 (unknown users:
    /// users not seen in training) is zeros, and the lookup multiplies by `users > 0`, so row 0
    /// gets exactly zero gradient: an AdamW step (zero moments, decoupled decay of a zero row)
    /// leaves it zero, and its value never reaches the output anyway.
    pub users: nn::Embedding,
    gru: GruCell,
}

impl Lstur {
    /// The long-term representation `u_l` of `users [B]`: zeros for id 0, and in training (a
    /// `dropout` other than `Off`) zeros with probability `mask_prob` per sample.
    ///
    /// # Shapes
    /// `users [B]` (int64) -> `[B, d]` (ini) or `[B, d / 2]` (con).
    pub fn long_term(&self, users: &Tensor, dropout: &Dropout) -> Tensor {
        let known = users.gt(0);
        let keep = match dropout {
            Dropout::Off => known,
            _ if self.mask_prob >= 1.0 => known.zeros_like(),
            _ => {
                // Dropout draws the Bernoulli keep-mask from the step's seeded stream (host)
                // or generator (CUDA): kept entries are 1 / (1 - p) > 0, dropped ones 0.
                let ones = Tensor::ones(users.size(), (Kind::Float, users.device()));
                known.logical_and(&dropout.apply(&ones, self.mask_prob).gt(0.0))
            }
        };
        let table = &self.users.ws;
        self.users.forward(users) * keep.to_kind(table.kind()).unsqueeze(-1)
    }
}

/// The user encoder chosen by the config.
#[derive(Debug)]
pub enum UserEncoder {
    Additive(AdditiveAttention),
    Nrms { self_attention: SelfAttention, pooling: AdditiveAttention },
    Lstur(Lstur),
}

impl UserEncoder {
    /// `num_users` counts user ids 1..=num_users (0 = unknown user); only LSTUR uses it.
    ///
    /// # Panics
    /// LSTUR-con with an odd `dim` (its two halves are `dim / 2` wide).
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
            UserEncoderKind::Lstur { mode, mask_prob } => {
                let state = match mode {
                    LsturMode::Ini => dim,
                    LsturMode::Con => {
                        assert!(
                            dim % 2 == 0,
                            "LSTUR-con concatenates a GRU state and a user embedding of dim / 2 \
                             each, so the news vector width must be even, not {dim}"
                        );
                        dim / 2
                    }
                };
                let users = nn::embedding(p / "users", num_users + 1, state, Default::default());
                tch::no_grad(|| {
                    let _ = users.ws.get(0).zero_();
                });
                UserEncoder::Lstur(Lstur {
                    mode,
                    mask_prob,
                    users,
                    gru: GruCell::new(&(p / "gru"), dim, state),
                })
            }
        }
    }

    /// `dropout`: `Dropout::Off` at evaluation; in training the step's dropout, whose random
    /// source also draws LSTUR's long-term masks (the other encoders have no randomness).
    ///
    /// # Shapes
    /// `history [B, H, d]` (oldest first), `mask [B, H]` (bool), `users [B]` (int64) -> `[B, d]`.
    pub fn forward(&self, history: &Tensor, mask: &Tensor, users: &Tensor, dropout: &Dropout) -> Tensor {
        match self {
            UserEncoder::Additive(attention) => attention.forward(history, Some(mask)),
            UserEncoder::Nrms { self_attention, pooling } => {
                pooling.forward(&self_attention.forward(history, mask), Some(mask))
            }
            UserEncoder::Lstur(lstur) => {
                let long_term = lstur.long_term(users, dropout).to_kind(history.kind());
                let mut h = match lstur.mode {
                    LsturMode::Ini => long_term.shallow_clone(),
                    LsturMode::Con => long_term.zeros_like(),
                };
                let keep = mask.to_kind(history.kind()).unsqueeze(-1); // [B, H, 1]
                for t in 0..history.size()[1] {
                    let m = keep.select(1, t);
                    let next = lstur.gru.step(&history.select(1, t), &h);
                    h = &m * next + (1.0 - &m) * h;
                }
                match lstur.mode {
                    LsturMode::Ini => h,
                    LsturMode::Con => Tensor::cat(&[h, long_term], -1),
                }
            }
        }
    }
}

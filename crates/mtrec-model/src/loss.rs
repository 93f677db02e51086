//! Click predictor and the three MTRec losses (paper: `../shared/paper/MTREC.md`).
use tch::{Kind, Reduction, Tensor};

/// Click scores `s_j = r^c_j . r^u`.
///
/// # Shapes
/// `candidates [B, C, d]`, `user [B, d]` -> `[B, C]`.
pub fn click_scores(candidates: &Tensor, user: &Tensor) -> Tensor {
    candidates.bmm(&user.unsqueeze(-1)).squeeze_dim(-1)
}

/// Main loss: `-log( exp(s^+) / (exp(s^+) + sum_j exp(s^j)) )` per clicked news with its K
/// sampled non-clicked news, averaged over samples (the paper sums; the mean keeps the learning
/// rate independent of the batch size).
///
/// # Shapes
/// `scores [B, 1 + K]`, the clicked news in column 0 -> scalar.
pub fn main_loss(scores: &Tensor) -> Tensor {
    let target = Tensor::zeros([scores.size()[0]], (Kind::Int64, scores.device()));
    scores.cross_entropy_loss::<Tensor>(&target, None, Reduction::Mean, -100, 0.0)
}

/// Category loss `-(1/I) sum_i sum_k p_ik log p_hat_ik` with one-hot `p`: cross-entropy of the
/// category head on `[CLS]`, each news item weighted by how often it occurs in the batch (it is
/// encoded once), divided by `denominator` (the occurrences the mean is over).
///
/// # Shapes
/// `logits [N, categories]`, `labels [N]` (int64), `weights [N]` (float) -> scalar.
pub fn category_loss(logits: &Tensor, labels: &Tensor, weights: &Tensor, denominator: f64) -> Tensor {
    let per_news = logits.cross_entropy_loss::<Tensor>(labels, None, Reduction::None, -100, 0.0);
    (per_news * weights).sum(Kind::Float) / denominator
}

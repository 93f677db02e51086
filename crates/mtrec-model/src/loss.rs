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

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[f32]) -> Tensor {
        Tensor::from_slice(v)
    }

    #[test]
    fn click_scores_are_dot_products() {
        let candidates = t(&[1.0, 2.0, 0.0, -1.0, 3.0, 1.0]).view([1, 3, 2]);
        let user = t(&[2.0, 0.5]).view([1, 2]);
        assert_eq!(
            Vec::<f32>::try_from(click_scores(&candidates, &user).view([-1])).unwrap(),
            [3.0, -0.5, 6.5]
        );
    }

    /// `-log softmax(s)_0` per sample, averaged: hand-computed for two samples of 1 + 2 scores.
    #[test]
    fn main_loss_is_the_mean_negative_log_likelihood_of_the_clicked_news() {
        let scores = t(&[2.0, 0.0, 1.0, 0.0, 0.0, 0.0]).view([2, 3]);
        let first = -(2f64.exp() / (2f64.exp() + 1.0 + 1f64.exp())).ln(); // 0.40760596
        let second = 3f64.ln(); // 1.09861229
        let loss = main_loss(&scores).double_value(&[]);
        assert!((loss - (first + second) / 2.0).abs() < 1e-6, "{loss}");
    }

    /// Each news item's cross-entropy times its occurrences, over the occurrences `I`.
    #[test]
    fn category_loss_weighs_each_news_item_by_its_occurrences() {
        let logits = t(&[1.0, 0.0, 0.0, 0.0, 2.0, 0.0]).view([2, 3]);
        let labels = Tensor::from_slice(&[0i64, 2]);
        let weights = t(&[3.0, 1.0]);
        let ce0 = -(1f64.exp() / (1f64.exp() + 2.0)).ln(); // 0.55144471
        let ce1 = -(1.0 / (2.0 + 2f64.exp())).ln(); // 2.24092550
        let loss = category_loss(&logits, &labels, &weights, 4.0).double_value(&[]);
        assert!((loss - (3.0 * ce0 + ce1) / 4.0).abs() < 1e-6, "{loss}");
    }
}

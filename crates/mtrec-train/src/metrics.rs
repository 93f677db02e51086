//! Ranking metrics of the MIND competition, per impression then averaged over impressions
//! (`paper/MTREC.md` "Evaluation metrics"; the official `evaluate.py` of MIND):
//! - AUC: ROC AUC of scores against 0/1 labels, ties counted half (as `sklearn.metrics.roc_auc_score`);
//! - MRR: `sum_i y_(i) / i` over the ranking by score, divided by the number of clicks;
//! - nDCG@k: DCG with gains `2^y - 1` and discounts `log2(rank + 1)` over the top k, over the ideal DCG.
//!
//! Ranking ties (they move MRR and nDCG, not AUC) are broken as a stable ascending sort, reversed:
//! among equal scores the later candidate ranks first. That is what the official script's
//! `np.argsort(y_score)[::-1]` gives for impressions of up to 16 candidates (numpy sorts those by
//! insertion, which is stable); on longer ones numpy's introsort or SIMD sort leaves tied scores in
//! an order that depends on the numpy build, which no implementation can match.
use serde::{Deserialize, Serialize};

/// Metric sums over impressions; averaged by [`RankingMetrics::mean`]. Sums (not means) so that
/// ranks can add theirs up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct RankingMetrics {
    pub auc: f64,
    pub mrr: f64,
    pub ndcg5: f64,
    pub ndcg10: f64,
    pub impressions: f64,
}

impl RankingMetrics {
    /// Adds one impression. Impressions with no click or no non-click have no AUC and are
    /// skipped, as the official scorer would fail on them (MIND has none).
    pub fn add(&mut self, labels: &[i8], scores: &[f32]) {
        let positives = labels.iter().filter(|&&y| y > 0).count();
        if positives == 0 || positives == labels.len() {
            return;
        }
        self.auc += auc(labels, scores);
        self.mrr += mrr(labels, scores);
        self.ndcg5 += ndcg(labels, scores, 5);
        self.ndcg10 += ndcg(labels, scores, 10);
        self.impressions += 1.0;
    }

    pub fn as_array(&self) -> [f64; 5] {
        [self.auc, self.mrr, self.ndcg5, self.ndcg10, self.impressions]
    }

    pub fn from_array(a: [f64; 5]) -> Self {
        RankingMetrics { auc: a[0], mrr: a[1], ndcg5: a[2], ndcg10: a[3], impressions: a[4] }
    }

    /// Averages over impressions.
    pub fn mean(&self) -> RankingMetrics {
        let n = self.impressions.max(1.0);
        RankingMetrics {
            auc: self.auc / n,
            mrr: self.mrr / n,
            ndcg5: self.ndcg5 / n,
            ndcg10: self.ndcg10 / n,
            impressions: self.impressions,
        }
    }
}

impl std::fmt::Display for RankingMetrics {
    /// `AUC 0.6943  MRR 0.3379  nDCG@5 0.3764  nDCG@10 0.4374  (73152 impressions)`
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "AUC {:.4}  MRR {:.4}  nDCG@5 {:.4}  nDCG@10 {:.4}  ({} impressions)",
            self.auc, self.mrr, self.ndcg5, self.ndcg10, self.impressions
        )
    }
}

/// Candidate indices from best to worst; among ties the later candidate first (module doc).
pub fn ranking(scores: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b])); // stable ascending
    order.reverse();
    order
}

/// ROC AUC with ties counted half: the Mann-Whitney statistic over (positive, negative) pairs.
pub fn auc(labels: &[i8], scores: &[f32]) -> f64 {
    let mut wins = 0.0;
    let (mut pos, mut neg) = (0.0, 0.0);
    for (i, &yi) in labels.iter().enumerate() {
        if yi > 0 {
            pos += 1.0;
            for (j, &yj) in labels.iter().enumerate() {
                if yj == 0 {
                    wins += match scores[i].total_cmp(&scores[j]) {
                        std::cmp::Ordering::Greater => 1.0,
                        std::cmp::Ordering::Equal => 0.5,
                        std::cmp::Ordering::Less => 0.0,
                    };
                }
            }
        } else {
            neg += 1.0;
        }
    }
    wins / (pos * neg)
}

/// Mean reciprocal rank of the clicks.
pub fn mrr(labels: &[i8], scores: &[f32]) -> f64 {
    let order = ranking(scores);
    let rr: f64 = order.iter().enumerate().map(|(rank, &i)| labels[i] as f64 / (rank + 1) as f64).sum();
    rr / labels.iter().map(|&y| y as f64).sum::<f64>()
}

fn dcg(labels_in_rank_order: impl Iterator<Item = i8>, k: usize) -> f64 {
    labels_in_rank_order
        .take(k)
        .enumerate()
        .map(|(rank, y)| (2f64.powi(y as i32) - 1.0) / ((rank + 2) as f64).log2())
        .sum()
}

/// nDCG@k.
pub fn ndcg(labels: &[i8], scores: &[f32], k: usize) -> f64 {
    let actual = dcg(ranking(scores).into_iter().map(|i| labels[i]), k);
    let mut ideal_labels = labels.to_vec();
    ideal_labels.sort_by(|a, b| b.cmp(a));
    actual / dcg(ideal_labels.into_iter(), k)
}

/// 1-based rank of each candidate in its original order (the leaderboard's `[r1,r2,...]`).
pub fn ranks_in_input_order(scores: &[f32]) -> Vec<usize> {
    let mut ranks = vec![0; scores.len()];
    for (rank, i) in ranking(scores).into_iter().enumerate() {
        ranks[i] = rank + 1;
    }
    ranks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-12, "{a} vs {b}");
    }

    #[test]
    fn single_click_impression_by_hand() {
        // Scores rank candidates 2, 0, 3, 1; the click is candidate 0 (rank 2).
        let labels = [1, 0, 0, 0];
        let scores = [0.5, 0.1, 0.9, 0.3];
        close(auc(&labels, &scores), 2.0 / 3.0); // beats 1 and 3, loses to 2
        close(mrr(&labels, &scores), 0.5);
        close(ndcg(&labels, &scores, 5), 1.0 / 3f64.log2()); // ideal DCG is 1
        close(ndcg(&labels, &scores, 1), 0.0);
        assert_eq!(ranks_in_input_order(&scores), vec![2, 4, 1, 3]);
    }

    #[test]
    fn two_clicks_by_hand() {
        // Ranking: 1 (click), 3, 0 (click), 2.
        let labels = [1, 1, 0, 0];
        let scores = [0.4, 0.8, 0.1, 0.6];
        close(auc(&labels, &scores), 3.0 / 4.0); // pairs (0,2) (0,3)x (1,2) (1,3)
        close(mrr(&labels, &scores), (1.0 + 1.0 / 3.0) / 2.0);
        let dcg = 1.0 + 1.0 / 4f64.log2();
        let ideal = 1.0 + 1.0 / 3f64.log2();
        close(ndcg(&labels, &scores, 10), dcg / ideal);
    }

    #[test]
    fn ties_count_half_in_auc_and_follow_numpy_in_rankings() {
        let labels = [0, 1, 0];
        let scores = [0.5, 0.5, 0.5];
        close(auc(&labels, &scores), 0.5); // sklearn: all tied -> 0.5
        // np.argsort([.5,.5,.5])[::-1] = [2, 1, 0]: the click (1) is at rank 2.
        close(mrr(&labels, &scores), 0.5);
        assert_eq!(ranks_in_input_order(&scores), vec![3, 2, 1]);
        // Partial tie: positive tied with one negative, above another.
        close(auc(&[1, 0, 0], &[0.7, 0.7, 0.2]), 0.75);
    }

    #[test]
    fn averaging_skips_impressions_without_both_labels() {
        let mut m = RankingMetrics::default();
        m.add(&[1, 0], &[0.9, 0.1]);
        m.add(&[0, 0], &[0.9, 0.1]);
        m.add(&[0, 1], &[0.9, 0.1]);
        let mean = m.mean();
        assert_eq!(mean.impressions, 2.0);
        close(mean.auc, 0.5);
        close(mean.mrr, 0.75);
    }
}

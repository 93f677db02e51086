"""MIND's official scorer, re-implemented for the tests: the formulas of the MIND competition's
`evaluate.py` (paper/MTREC.md "Evaluation metrics"), numpy and sklearn's `roc_auc_score`.
A submission's ranks score as `1 / rank`; each impression gets AUC, MRR, nDCG@5 and nDCG@10, and
a data set's metric is their mean over the impressions with both a click and a non-click.
Imported by tests/leaderboard.rs (MIND) and tests/ebnerd.rs (EB-NeRD), which put this folder on
PYTHONPATH."""
import numpy as np
from sklearn.metrics import roc_auc_score


def dcg_score(y_true, y_score, k=10):
    order = np.argsort(y_score)[::-1]
    y_true = np.take(y_true, order[:k])
    gains = 2 ** y_true - 1
    discounts = np.log2(np.arange(len(y_true)) + 2)
    return np.sum(gains / discounts)


def ndcg_score(y_true, y_score, k=10):
    return dcg_score(y_true, y_score, k) / dcg_score(y_true, y_true, k)


def mrr_score(y_true, y_score):
    order = np.argsort(y_score)[::-1]
    y_true = np.take(y_true, order)
    return np.sum(y_true / (np.arange(len(y_true)) + 1)) / np.sum(y_true)


def impression_metrics(y_true, y_score):
    """[AUC, MRR, nDCG@5, nDCG@10] of one impression with both classes."""
    return [roc_auc_score(y_true, y_score), mrr_score(y_true, y_score), ndcg_score(y_true, y_score, 5),
            ndcg_score(y_true, y_score, 10)]

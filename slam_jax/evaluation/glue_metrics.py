"""GLUE metrics per task (Wang et al. 2019, Table 1), computed with scikit-learn and scipy.

| task | metric(s) |
|---|---|
| CoLA | Matthews correlation |
| SST-2, MNLI (matched / mismatched), QNLI, RTE, WNLI | accuracy |
| MRPC, QQP | F1 of the positive class (1) and accuracy |
| STS-B | Pearson and Spearman correlation (regression) |

Every value is reported x 100 (the GLUE leaderboard's convention) and a task's `score` is the mean of its metrics.
A correlation of constant predictions or labels is undefined (scipy returns NaN); we report 0.0, the value
scikit-learn's `matthews_corrcoef` gives in the same degenerate case (our choice, so a collapsed model scores 0
instead of poisoning an average with NaN).
"""
from __future__ import annotations

import numpy as np
from scipy import stats
from sklearn import metrics as skm

TASK_METRICS: dict[str, tuple[str, ...]] = {
    "cola": ("mcc",),
    "sst2": ("accuracy",),
    "mrpc": ("f1", "accuracy"),
    "qqp": ("f1", "accuracy"),
    "stsb": ("pearson", "spearman"),
    "mnli": ("accuracy",),
    "qnli": ("accuracy",),
    "rte": ("accuracy",),
    "wnli": ("accuracy",),
}
REGRESSION_TASKS = ("stsb",)


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    return float(skm.accuracy_score(labels, predictions))


def f1(predictions: np.ndarray, labels: np.ndarray) -> float:
    """F1 of the positive class 1 (binary tasks)."""
    return float(skm.f1_score(labels, predictions, pos_label=1, average="binary", zero_division=0.0))


def mcc(predictions: np.ndarray, labels: np.ndarray) -> float:
    return float(skm.matthews_corrcoef(labels, predictions))


def _constant(x: np.ndarray) -> bool:
    return bool(np.all(x == x[0]))


def pearson(predictions: np.ndarray, labels: np.ndarray) -> float:
    if _constant(predictions) or _constant(labels):
        return 0.0
    return float(stats.pearsonr(predictions, labels).statistic)


def spearman(predictions: np.ndarray, labels: np.ndarray) -> float:
    if _constant(predictions) or _constant(labels):
        return 0.0
    return float(stats.spearmanr(predictions, labels).statistic)


METRIC_FNS = {"accuracy": accuracy, "f1": f1, "mcc": mcc, "pearson": pearson, "spearman": spearman}


def glue_scores(task: str, predictions, labels) -> dict[str, float]:
    """Scores one GLUE task's predictions.

    Args:
      task: a key of TASK_METRICS ('mnli' for both MNLI validation sets).
      predictions, labels: [examples] class ids (int) or, for STS-B, real-valued similarities.
    Returns:
      {metric: value x 100 for each of the task's metrics, "score": their mean}.
    Raises:
      ValueError naming the task: unknown task, length mismatch, no examples, non-finite values, or non-integer
      class ids for a classification task.
    """
    if task not in TASK_METRICS:
        raise ValueError(f"unknown GLUE task {task!r}; expected one of {sorted(TASK_METRICS)}")
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if predictions.shape != labels.shape or predictions.ndim != 1:
        raise ValueError(f"GLUE {task}: predictions {predictions.shape} and labels {labels.shape} must be equal "
                         "1-D shapes")
    if predictions.size == 0:
        raise ValueError(f"GLUE {task}: no examples to score")
    for name, values in (("predictions", predictions), ("labels", labels)):
        if not np.all(np.isfinite(values.astype(np.float64))):
            raise ValueError(f"GLUE {task}: {name} contain NaN or infinite values")
        if task not in REGRESSION_TASKS and not np.array_equal(values, np.round(values)):
            raise ValueError(f"GLUE {task}: {name} must be integer class ids, got {values[:5]}...")
    if task in REGRESSION_TASKS:
        predictions, labels = predictions.astype(np.float64), labels.astype(np.float64)
    else:
        predictions, labels = predictions.astype(np.int64), labels.astype(np.int64)
    out = {m: 100.0 * METRIC_FNS[m](predictions, labels) for m in TASK_METRICS[task]}
    out["score"] = float(np.mean(list(out.values())))
    return out

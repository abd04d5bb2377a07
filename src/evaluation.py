"""Top-1 accuracy and macro precision, recall and F1 of identity predictions."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from sklearn.metrics import accuracy_score, precision_recall_fscore_support


@dataclass
class Metrics:
    """Identification metrics on one split; macro averages weight every class equally."""

    top1_accuracy: float
    macro_precision: float
    macro_recall: float
    macro_f1: float

    def to_dict(self, prefix: str = "") -> dict:
        return {f"{prefix}{key}": value for key, value in asdict(self).items()}


def evaluate(y_true: np.ndarray, y_pred: np.ndarray) -> Metrics:
    """Score predictions against true labels.

    Macro averages run over every class that occurs in ``y_true`` or ``y_pred``; a class never
    predicted has precision 0 rather than a warning.
    """
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has shape {y_true.shape} but y_pred has shape {y_pred.shape}")
    precision, recall, f1, _ = precision_recall_fscore_support(y_true, y_pred, average="macro", zero_division=0)
    return Metrics(
        top1_accuracy=float(accuracy_score(y_true, y_pred)),
        macro_precision=float(precision),
        macro_recall=float(recall),
        macro_f1=float(f1),
    )

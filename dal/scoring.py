"""Informativeness scores: from a detector's softmax rows to one number per image.

Every detection carries its full softmax row over C+1 classes (column 0 is background). A
per-detection score says how unsure the model is about that box; an image's score aggregates its
detections (the paper sums max-margin scores, Eq. 2). All scores lie in [0, 1] per detection and
grow with uncertainty, so "higher = ask a human first" holds for every method.

Pure numpy: the edge agent imports this without torch.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from dal.errors import ConfigError, ModelError

# float32 softmax from ONNX sums to 1 within ~1e-6; this leaves room for half-precision outputs.
ROW_SUM_ATOL = 1e-3


class ProbabilityError(ModelError, ValueError):
    """The probabilities handed to a scorer are not a [N, C+1] matrix of softmax rows."""


class UnknownScoringError(ConfigError, ValueError):
    """A score method or aggregation name that this module does not offer."""


def _margin(p: np.ndarray) -> np.ndarray:
    """Eq. 1: 1 - (P(ŷ1|x) - P(ŷ2|x)); 0 for a one-hot row, 1 for a tie at the top."""
    top2 = np.partition(p, p.shape[1] - 2, axis=1)[:, -2:]
    return 1.0 - (top2[:, 1] - top2[:, 0])


def _entropy(p: np.ndarray) -> np.ndarray:
    """Shannon entropy divided by log(C+1), so a uniform row scores 1 whatever C is."""
    logs = np.log(np.where(p > 0.0, p, 1.0))  # 0·log 0 counts as 0
    return -(p * logs).sum(axis=1) / np.log(p.shape[1])


def _least_confidence(p: np.ndarray) -> np.ndarray:
    """1 - max p: ignores how the remaining mass is spread, unlike margin and entropy."""
    return 1.0 - p.max(axis=1)


METHODS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "margin": _margin,
    "entropy": _entropy,
    "least_confidence": _least_confidence,
}

AGGREGATES: dict[str, Callable[[np.ndarray], float]] = {
    "sum": lambda s: float(s.sum()),  # the paper's Eq. 2: many unsure boxes beat one
    "max": lambda s: float(s.max()),  # the single most confusing box
    "mean": lambda s: float(s.mean()),  # unsureness independent of how crowded the image is
}


def _check_probs(probs: np.ndarray) -> np.ndarray:
    """Return `probs` as a float64 [N, C+1] array of softmax rows, or raise ProbabilityError."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise ProbabilityError(
            f"probabilities must be a 2-D [N, C+1] array, got shape {p.shape}",
            hint="pass one row per detection; for a single detection use row[None, :]",
        )
    if p.shape[0] == 0:
        return p
    if p.shape[1] < 2:
        raise ProbabilityError(
            f"probabilities need at least 2 columns (background + 1 class), got {p.shape[1]}",
            hint="export the full softmax row over background and all classes",
        )
    if not np.isfinite(p).all():
        raise ProbabilityError(
            "probabilities contain NaN or infinity", hint="check the model export and its input"
        )
    if p.min() < -ROW_SUM_ATOL or p.max() > 1.0 + ROW_SUM_ATOL:
        raise ProbabilityError(
            f"probabilities must lie in [0, 1], got range [{p.min():.4g}, {p.max():.4g}]",
            hint="apply softmax to the class logits before scoring",
        )
    sums = p.sum(axis=1)
    worst = int(np.argmax(np.abs(sums - 1.0)))
    if abs(sums[worst] - 1.0) > ROW_SUM_ATOL:
        raise ProbabilityError(
            f"row {worst} sums to {sums[worst]:.6g}, not 1",
            hint="pass the full softmax row including the background column 0",
        )
    return np.clip(p, 0.0, 1.0)


def _lookup(table: dict, name: str, what: str) -> Callable:
    """Find `name` in a registry or say which names exist."""
    if name not in table:
        raise UnknownScoringError(
            f"unknown {what} {name!r}", hint=f"choose one of {', '.join(sorted(table))}"
        )
    return table[name]


def detection_scores(probs: np.ndarray, method: str = "margin") -> np.ndarray:
    """Score each detection (row of `probs`, shape [N, C+1]); returns a float64 array [N] in [0, 1].

    Top-2 for margin is taken over all C+1 columns, background included, as in the paper: a box
    torn between "part" and "background" is as worth labelling as one torn between two parts.
    """
    score = _lookup(METHODS, method, "score method")
    p = _check_probs(probs)
    if p.shape[0] == 0:
        return np.zeros(0, dtype=np.float64)
    return score(p)


def image_score(probs: np.ndarray, method: str = "margin", aggregate: str = "sum") -> float:
    """One image's informativeness from its detections' softmax rows [N, C+1]; 0.0 when N == 0."""
    reduce = _lookup(AGGREGATES, aggregate, "aggregation")
    scores = detection_scores(probs, method)
    if scores.size == 0:
        return 0.0
    return reduce(scores)

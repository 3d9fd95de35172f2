"""Per-detection uncertainty scores and their per-image aggregation (paper Eq. 1 and 2)."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from dal.errors import ConfigError, DalError, ModelError
from dal.scoring import AGGREGATES, METHODS, ProbabilityError, detection_scores, image_score

# Two detections over background + 2 classes, scores worked out by hand.
HAND = np.array([[0.1, 0.6, 0.3], [0.5, 0.5, 0.0]])
HAND_EXPECTED = {
    "margin": [1 - (0.6 - 0.3), 1 - (0.5 - 0.5)],
    "least_confidence": [1 - 0.6, 1 - 0.5],
    "entropy": [
        -(0.1 * math.log(0.1) + 0.6 * math.log(0.6) + 0.3 * math.log(0.3)) / math.log(3),
        math.log(2) / math.log(3),
    ],
}


@pytest.mark.parametrize("method", sorted(HAND_EXPECTED))
def test_hand_computed_detection_scores(method: str) -> None:
    np.testing.assert_allclose(detection_scores(HAND, method), HAND_EXPECTED[method], atol=1e-12)


@pytest.mark.parametrize(
    ("aggregate", "expected"), [("sum", 0.7 + 1.0), ("max", 1.0), ("mean", (0.7 + 1.0) / 2)]
)
def test_margin_aggregations(aggregate: str, expected: float) -> None:
    assert image_score(HAND, "margin", aggregate) == pytest.approx(expected)


def test_default_is_the_papers_sum_of_margins() -> None:
    assert image_score(HAND) == pytest.approx(1.7)


def test_background_column_takes_part_in_the_margin() -> None:
    # Torn between background and class 1: maximally uncertain although class 1 leads class 2.
    assert detection_scores(np.array([[0.45, 0.45, 0.1]]))[0] == pytest.approx(1.0)


@pytest.mark.parametrize("columns", [2, 3, 6, 81])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_one_hot_scores_zero_and_uniform_scores_one(columns: int, method: str) -> None:
    one_hot = np.eye(columns)
    uniform = np.full((1, columns), 1.0 / columns)
    np.testing.assert_allclose(detection_scores(one_hot, method), 0.0, atol=1e-12)
    # Only margin and entropy reach 1 on a uniform row; least-confidence tops out at 1 - 1/(C+1).
    expected = 1.0 - 1.0 / columns if method == "least_confidence" else 1.0
    assert detection_scores(uniform, method)[0] == pytest.approx(expected)


@pytest.mark.parametrize("aggregate", sorted(AGGREGATES))
@pytest.mark.parametrize("method", sorted(METHODS))
def test_no_detections_scores_zero(method: str, aggregate: str) -> None:
    empty = np.empty((0, 5), dtype=np.float32)
    assert image_score(empty, method, aggregate) == 0.0
    assert detection_scores(empty, method).shape == (0,)


def test_float32_softmax_is_accepted() -> None:
    logits = np.random.default_rng(0).normal(size=(20, 6)).astype(np.float32)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert 0.0 < image_score(probs) <= 20.0


@pytest.mark.parametrize(
    ("probs", "fragment"),
    [
        (np.array([0.2, 0.8]), "2-D"),
        (np.ones((3, 1)), "at least 2 columns"),
        (np.array([[2.0, -1.0]]), "[0, 1]"),
        (np.array([[0.3, 0.3, 0.3]]), "sums to"),
        (np.array([[0.5, np.nan]]), "NaN"),
        (np.array([[1.5, 0.3, -0.2]]), "[0, 1]"),  # logits, not probabilities
    ],
)
def test_invalid_probabilities_are_rejected(probs: np.ndarray, fragment: str) -> None:
    with pytest.raises(ProbabilityError, match=re.escape(fragment)) as info:
        image_score(probs)
    assert isinstance(info.value, ValueError | ModelError | DalError)
    assert info.value.hint


@pytest.mark.parametrize(("method", "aggregate"), [("margins", "sum"), ("margin", "median")])
def test_unknown_names_list_the_valid_ones(method: str, aggregate: str) -> None:
    with pytest.raises(ValueError) as info:
        image_score(HAND, method, aggregate)
    assert isinstance(info.value, ConfigError)
    assert "least_confidence" in str(info.value) or "mean" in str(info.value)


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


LOGITS = st.tuples(st.integers(0, 12), st.integers(2, 8)).flatmap(
    lambda shape: arrays(np.float64, shape, elements=st.floats(-20, 20))
)


@settings(max_examples=80, deadline=None)
@given(LOGITS)
def test_score_properties(logits: np.ndarray) -> None:
    probs = _softmax(logits) if logits.shape[0] else logits
    per = {m: detection_scores(probs, m) for m in METHODS}
    for scores in per.values():
        assert scores.shape == (probs.shape[0],)
        assert ((scores >= -1e-12) & (scores <= 1 + 1e-12)).all()
    # 1 - p1 + p2 ≥ 1 - p1: margin is never below least-confidence.
    assert (per["margin"] >= per["least_confidence"] - 1e-12).all()
    # Scores depend on the probabilities, not on which column holds them.
    shuffled = probs[:, np.random.default_rng(0).permutation(probs.shape[1])]
    for m, scores in per.items():
        np.testing.assert_allclose(detection_scores(shuffled, m), scores, atol=1e-9)
    total, top, mean = (image_score(probs, "margin", a) for a in ("sum", "max", "mean"))
    assert total == pytest.approx(mean * probs.shape[0], abs=1e-9)
    assert mean <= top + 1e-12
    assert top <= total + 1e-12

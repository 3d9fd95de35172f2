"""Keep/skip policy and drift statistics."""

from __future__ import annotations

import numpy as np
import pytest

from dal import config as cfg
from dal.agent.config import AgentConfig
from dal.agent.policy import (
    DUPLICATE,
    KEPT,
    TOO_SOON,
    DriftMonitor,
    KeepPolicy,
    ReferenceStats,
    RunningStats,
    check_drift,
    max_cosine_similarity,
)

D = 256


def direction(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=D).astype(np.float32)


def test_rate_limit_counts_from_the_last_kept_frame() -> None:
    policy = KeepPolicy(min_interval_s=1.0, dedup_threshold=1.0, dedup_window=0)
    stamps = [0.0, 0.4, 0.99, 1.0, 1.5, 2.2, 3.0]
    kept = [t for t in stamps if policy.offer(t, direction(int(t * 10))).keep]
    assert kept == [0.0, 1.0, 2.2]
    assert policy.counts == {KEPT: 3, TOO_SOON: 4, DUPLICATE: 0}
    assert policy.due(0.5)  # a clock that went back does not block forever


def test_near_duplicates_are_skipped_within_the_window() -> None:
    policy = KeepPolicy(min_interval_s=0.0, dedup_threshold=0.95, dedup_window=2)
    a, b, c = direction(1), direction(2), direction(3)
    assert policy.offer(0, a).keep
    twin = a * 3.0 + 0.05 * direction(9)  # same direction, other scale and a little noise
    d = policy.offer(1, twin)
    assert (d.keep, d.reason) == (False, DUPLICATE) and d.similarity > 0.95  # type: ignore[operator]
    assert policy.offer(2, b).keep and policy.offer(3, c).keep
    assert policy.offer(4, twin).keep  # a left the window of 2
    assert policy.counts[DUPLICATE] == 1


def test_decide_does_not_remember_until_told() -> None:
    policy = KeepPolicy(min_interval_s=10.0, dedup_threshold=0.9, dedup_window=4)
    assert policy.decide(0.0, direction(1)).keep
    assert policy.decide(1.0, direction(1)).keep  # nothing remembered yet
    policy.remember(1.0, direction(1))
    assert policy.decide(5.0, direction(2)).reason == TOO_SOON
    policy.reset_features()
    assert policy.decide(20.0, direction(1)).keep


def test_cosine_similarity_helpers() -> None:
    bank = np.stack([direction(1) / np.linalg.norm(direction(1)), np.zeros(D, np.float32)])
    assert max_cosine_similarity(direction(1), bank) == pytest.approx(1.0, abs=1e-6)
    assert max_cosine_similarity(direction(1), np.empty((0, D))) is None
    assert max_cosine_similarity(np.zeros(D), bank) == 0.0


def test_running_stats_match_numpy_then_follow_recent_values() -> None:
    rng = np.random.default_rng(0)
    scores = rng.uniform(0, 2, size=50)
    stats = RunningStats(window=100)
    for s in scores:
        stats.update(s, np.full(4, s))
    assert stats.score_mean == pytest.approx(scores.mean())
    assert stats.score_std == pytest.approx(scores.std())
    np.testing.assert_allclose(stats.feature_mean, np.full(4, scores.mean()))
    short = RunningStats(window=10)
    for _ in range(20):
        short.update(0.0, np.zeros(4))
    for _ in range(60):
        short.update(1.0, np.ones(4))
    assert short.score_mean > 0.99  # old values have faded out


def feed(
    monitor: DriftMonitor, rng: np.random.Generator, n: int, score_mu: float, base: np.ndarray
) -> None:
    for _ in range(n):
        monitor.update(float(rng.normal(score_mu, 0.2)), base + 0.3 * rng.normal(size=D))


def test_drift_self_calibrates_then_flags_a_score_shift() -> None:
    rng = np.random.default_rng(1)
    base = direction(1)
    monitor = DriftMonitor(window=50, min_samples=50, score_z=1.0, feature_distance=0.2)
    feed(monitor, rng, 60, 1.0, base)
    assert monitor.reference is not None and not monitor.last.drift
    feed(monitor, rng, 100, 1.0, base)
    assert not monitor.last.drift  # same scene: no drift
    feed(monitor, rng, 150, 2.0, base)  # the model got much less sure
    report = monitor.last
    assert report.drift and report.score_z > 1.0
    assert any("score" in r for r in report.reasons)


def test_drift_flags_a_feature_shift_against_a_shipped_reference() -> None:
    rng = np.random.default_rng(2)
    reference = ReferenceStats(
        score_mean=1.0,
        score_std=0.2,
        feature_mean=direction(1) * 1.0,
        count=500,
        model_version="m3",
    )
    reference = ReferenceStats.from_dict(reference.to_dict())  # survives JSON
    config = cfg.from_dict(AgentConfig, {"drift": {"window": 40, "min_samples": 40}}).drift
    monitor = DriftMonitor.from_config(config, reference=reference, model_version="m3")
    feed(monitor, rng, 80, 1.0, direction(1))
    assert not monitor.last.drift and monitor.last.feature_distance < 0.1
    feed(monitor, rng, 200, 1.0, direction(7))  # a new part or camera angle
    assert monitor.last.drift and monitor.last.feature_distance >= config.feature_distance
    monitor.reset(model_version="m4")
    assert monitor.reference is None and monitor.stats.count == 0


def test_no_verdict_before_min_samples() -> None:
    stats = RunningStats(window=10)
    stats.update(5.0, direction(3))
    ref = ReferenceStats(0.0, 0.1, direction(1), 100)
    report = check_drift(stats, ref, score_z=1.0, feature_distance=0.1, min_samples=10)
    assert not report.drift and report.score_z == pytest.approx(50.0)

"""Which frames the agent keeps, and whether what it sees has drifted from what it was deployed on.

Keep/skip: a camera gives 15-30 near-identical frames a second; the pool wants varied ones.
Two cheap rules: at least `min_interval_s` between kept frames (checked before inference, so
skipped frames cost nothing), and no frame whose feature is nearly parallel (cosine ≥
`dedup_threshold`) to one of the last `dedup_window` kept features (checked after inference,
since the feature comes from the model).

Drift: running (exponentially weighted) mean and std of image scores and a running mean
feature, compared with reference statistics of the deployed model. When the mean score moves
by `score_z` reference standard deviations, or the mean feature turns by `feature_distance`
(cosine distance), the scene no longer looks like what the model knows: a reason to start an
active-learning cycle. Without reference statistics (none shipped with the model) the first
`min_samples` frames after deployment become the reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

KEPT = "kept"
TOO_SOON = "too_soon"
DUPLICATE = "duplicate"
MIN_SCORE_STD = 0.01  # floor for a reference std: a model that scored every frame 0 has std 0


def unit(vector: np.ndarray) -> np.ndarray:
    """L2-normalised float32 copy; a zero vector stays zero (it matches nothing)."""
    v = np.asarray(vector, dtype=np.float32).reshape(-1)
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 0 else v.copy()


def max_cosine_similarity(feature: np.ndarray, bank: np.ndarray) -> float | None:
    """Largest cosine similarity between `feature` and the unit rows of `bank`; None if empty."""
    if len(bank) == 0:
        return None
    return float(np.max(bank @ unit(feature)))


def cosine_distance(a: np.ndarray, b: np.ndarray) -> float:
    """1 - cos(a, b); 1.0 when either is zero."""
    return 1.0 - float(unit(a) @ unit(b))


# ---------------------------------------------------------------------------------------------
# keep / skip


@dataclass(frozen=True)
class Decision:
    keep: bool
    reason: str  # KEPT, TOO_SOON or DUPLICATE
    similarity: float | None = None  # to the closest recent kept feature


class KeepPolicy:
    """Rate limit + near-duplicate skip. Not thread-safe: the inference loop owns it."""

    def __init__(
        self, min_interval_s: float = 1.0, dedup_threshold: float = 0.98, dedup_window: int = 32
    ) -> None:
        if min_interval_s < 0 or dedup_window < 0 or not -1.0 <= dedup_threshold <= 1.0:
            raise ValueError(
                "min_interval_s and dedup_window must be ≥ 0, dedup_threshold in "
                f"[-1, 1]; got {min_interval_s}, {dedup_window}, {dedup_threshold}"
            )
        self.min_interval_s = min_interval_s
        self.dedup_threshold = dedup_threshold
        self.dedup_window = dedup_window
        self.counts = {KEPT: 0, TOO_SOON: 0, DUPLICATE: 0}
        self._last_kept: float | None = None
        self._bank: np.ndarray | None = None  # [window, D] unit features, ring buffer
        self._filled = 0
        self._next = 0

    @classmethod
    def from_config(cls, config: Any) -> KeepPolicy:
        """From a `PolicyConfig` section."""
        return cls(config.min_interval_s, config.dedup_threshold, config.dedup_window)

    def due(self, timestamp: float) -> bool:
        """Has enough time passed since the last kept frame? (A clock going back resets it.)"""
        last = self._last_kept
        return last is None or timestamp < last or timestamp - last >= self.min_interval_s

    def _recent(self) -> np.ndarray:
        if self._bank is None:
            return np.empty((0, 0), np.float32)
        return self._bank[: self._filled]

    def decide(self, timestamp: float, feature: np.ndarray) -> Decision:
        """Would this frame be kept? Counts the outcome; call `remember` once it is stored."""
        if not self.due(timestamp):
            self.counts[TOO_SOON] += 1
            return Decision(False, TOO_SOON)
        similarity = max_cosine_similarity(feature, self._recent())
        if similarity is not None and similarity >= self.dedup_threshold:
            self.counts[DUPLICATE] += 1
            return Decision(False, DUPLICATE, similarity)
        self.counts[KEPT] += 1
        return Decision(True, KEPT, similarity)

    def remember(self, timestamp: float, feature: np.ndarray) -> None:
        """Record a kept frame: it starts the interval and joins the duplicate window."""
        self._last_kept = timestamp
        if self.dedup_window == 0:
            return
        f = unit(feature)
        if self._bank is None or self._bank.shape[1] != f.size:
            self._bank = np.zeros((self.dedup_window, f.size), np.float32)
            self._filled = self._next = 0
        self._bank[self._next] = f
        self._next = (self._next + 1) % self.dedup_window
        self._filled = min(self._filled + 1, self.dedup_window)

    def offer(self, timestamp: float, feature: np.ndarray) -> Decision:
        """`decide`, and `remember` the frame when it is kept."""
        decision = self.decide(timestamp, feature)
        if decision.keep:
            self.remember(timestamp, feature)
        return decision

    def reset_features(self) -> None:
        """Forget recent features (a new model's features are not comparable to the old)."""
        self._bank = None
        self._filled = self._next = 0


# ---------------------------------------------------------------------------------------------
# drift


class RunningStats:
    """Running mean/std of scores and mean feature: exact averages for the first `window`
    samples, then exponentially weighted with weight 1/window (recent frames count most)."""

    def __init__(self, window: int = 200) -> None:
        if window < 1:
            raise ValueError(f"window must be ≥ 1, got {window}")
        self.window = window
        self.count = 0
        self.score_mean = 0.0
        self._score_var = 0.0
        self.feature_mean: np.ndarray | None = None

    def update(self, score: float, feature: np.ndarray) -> None:
        self.count += 1
        alpha = max(1.0 / self.count, 1.0 / self.window)
        delta = float(score) - self.score_mean
        self.score_mean += alpha * delta
        # the exponentially weighted variance; equals the population variance while alpha = 1/n
        self._score_var = (1.0 - alpha) * (self._score_var + alpha * delta * delta)
        f = np.asarray(feature, dtype=np.float64).reshape(-1)
        if self.feature_mean is None or self.feature_mean.shape != f.shape:
            self.feature_mean = f.copy()
        else:
            self.feature_mean += alpha * (f - self.feature_mean)

    @property
    def score_std(self) -> float:
        return float(np.sqrt(max(self._score_var, 0.0)))


@dataclass(frozen=True, eq=False)
class ReferenceStats:
    """Statistics of the deployed model on its reference data (or its first frames)."""

    score_mean: float
    score_std: float
    feature_mean: np.ndarray  # float64 [D]
    count: int
    model_version: str = ""

    @classmethod
    def from_running(cls, stats: RunningStats, model_version: str = "") -> ReferenceStats:
        if stats.feature_mean is None:
            raise ValueError("no samples yet")
        return cls(
            stats.score_mean, stats.score_std, stats.feature_mean.copy(), stats.count, model_version
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (model manifests, the agent's state file)."""
        return {
            "score_mean": self.score_mean,
            "score_std": self.score_std,
            "feature_mean": [float(v) for v in self.feature_mean],
            "count": self.count,
            "model_version": self.model_version,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReferenceStats:
        return cls(
            float(data["score_mean"]),
            float(data["score_std"]),
            np.asarray(data["feature_mean"], dtype=np.float64),
            int(data["count"]),
            str(data.get("model_version", "")),
        )


@dataclass(frozen=True)
class DriftReport:
    drift: bool
    score_z: float  # (current - reference mean score) / reference std
    feature_distance: float  # cosine distance of the mean features
    samples: int
    reasons: tuple[str, ...] = ()


def check_drift(
    current: RunningStats,
    reference: ReferenceStats,
    *,
    score_z: float,
    feature_distance: float,
    min_samples: int,
) -> DriftReport:
    """Compare running statistics with the reference; pure."""
    if current.feature_mean is None:
        return DriftReport(False, 0.0, 0.0, 0)
    z = (current.score_mean - reference.score_mean) / max(reference.score_std, MIN_SCORE_STD)
    distance = cosine_distance(current.feature_mean, reference.feature_mean)
    reasons: list[str] = []
    if current.count >= min_samples:
        if abs(z) >= score_z:
            reasons.append(f"mean score moved {z:+.2f} reference std")
        if distance >= feature_distance:
            reasons.append(f"mean feature turned by cosine distance {distance:.3f}")
    return DriftReport(bool(reasons), z, distance, current.count, tuple(reasons))


class DriftMonitor:
    """Feeds the running statistics and judges them against the reference."""

    def __init__(
        self,
        *,
        window: int = 200,
        min_samples: int = 100,
        score_z: float = 1.0,
        feature_distance: float = 0.1,
        reference: ReferenceStats | None = None,
        model_version: str = "",
    ) -> None:
        self.window = window
        self.min_samples = min_samples
        self.score_z = score_z
        self.feature_distance = feature_distance
        self.model_version = model_version
        self.reference = reference
        self.stats = RunningStats(window)
        self.last = DriftReport(False, 0.0, 0.0, 0)
        self._settling = False  # after a rebase: the reference waits for min_samples new frames

    @classmethod
    def from_config(
        cls, config: Any, reference: ReferenceStats | None = None, model_version: str = ""
    ) -> DriftMonitor:
        """From a `DriftConfig` section."""
        return cls(
            window=config.window,
            min_samples=config.min_samples,
            score_z=config.score_z,
            feature_distance=config.feature_distance,
            reference=reference,
            model_version=model_version,
        )

    def update(self, score: float, feature: np.ndarray) -> DriftReport:
        self.stats.update(score, feature)
        if self.reference is None or self._settling:
            if self.stats.count >= self.min_samples:
                self.reference = ReferenceStats.from_running(self.stats, self.model_version)
                self._settling = False
            self.last = DriftReport(False, 0.0, 0.0, self.stats.count)
            return self.last
        self.last = check_drift(
            self.stats,
            self.reference,
            score_z=self.score_z,
            feature_distance=self.feature_distance,
            min_samples=self.min_samples,
        )
        return self.last

    def rebase(self) -> None:
        """After a drift cycle: the current statistics become the reference at once, and the
        statistics of the next `min_samples` frames replace them. Why both: the running means
        trail a shift, so a cycle early in one would otherwise see the same shift again."""
        if self.stats.feature_mean is None:
            return
        self.reference = ReferenceStats.from_running(self.stats, self.model_version)
        self.stats = RunningStats(self.window)
        self.last = DriftReport(False, 0.0, 0.0, 0)
        self._settling = True

    def reset(self, reference: ReferenceStats | None = None, model_version: str = "") -> None:
        """A new model: new reference (or calibrate again), fresh running statistics."""
        self.reference = reference
        self.model_version = model_version
        self.stats = RunningStats(self.window)
        self.last = DriftReport(False, 0.0, 0.0, 0)
        self._settling = False

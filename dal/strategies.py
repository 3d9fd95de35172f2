"""Query strategies: which k pooled images a human should label next.

The caller hands over the pool as `Candidates` (ids, informativeness scores, feature vectors) and,
optionally, the already-labelled set. Every strategy has the same signature so `STRATEGIES` can
drive CLIs and MQTT commands; `select` looks one up by name.

Shared rules, so results do not depend on how the pool happened to be listed:
- Candidates are first ranked by score (descending), ties by id; "first" below means that rank.
  The same pool, k and seed give the same ids whatever order the rows arrived in.
- Labelled images are dropped from the pool unless `allow_labelled` is set; then they join it
  (the paper scores x ∈ {U, L}; re-selecting one spends a label on an image that has one).
- Features are L2-normalised before any distance is taken: the scale of the global-average-pooled
  P2 map changes from one fine-tuned model to the next, its direction is what tells images apart.
- k larger than the pool returns the whole pool; k == 0 returns [].
- Ids come back in the order the strategy picked them.

Pure numpy + scikit-learn: the edge agent imports this without torch.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from dal.errors import DalError

if TYPE_CHECKING:
    from sklearn.cluster import KMeans

# KMeans restarts: the pre-filtered set is only β·k points, so a few restarts cost little and
# make the clustering less hostage to one unlucky seeding.
KMEANS_N_INIT = 3
# Cap on the elements of one distance block (pool x labelled) so a 100k pool stays under ~32 MB.
DISTANCE_BLOCK = 8_000_000


class QueryError(DalError, ValueError):
    """A query was asked with an invalid pool, k, β or strategy name."""


@dataclass(frozen=True, eq=False)
class Candidates:
    """Images a strategy may choose from: ids [n], scores [n] (≥ 0, higher = more informative),
    features [n, d] (e.g. the 256-d GAP of P2)."""

    ids: Sequence[str]
    scores: np.ndarray
    features: np.ndarray

    def __post_init__(self) -> None:
        ids = tuple(self.ids)
        scores = np.asarray(self.scores, dtype=np.float64)
        features = np.asarray(self.features)
        if not np.issubdtype(features.dtype, np.floating):
            features = features.astype(np.float64)
        _check_shapes(ids, scores, features)
        _check_values(ids, scores, features)
        object.__setattr__(self, "ids", ids)
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "features", features)

    def __len__(self) -> int:
        return len(self.ids)


def _check_shapes(ids: tuple, scores: np.ndarray, features: np.ndarray) -> None:
    if scores.ndim != 1 or features.ndim != 2:
        raise QueryError(
            f"scores must be 1-D and features 2-D, got shapes {scores.shape} and {features.shape}",
            hint="pass scores as [n] and features as [n, d]",
        )
    if not len(ids) == scores.shape[0] == features.shape[0]:
        raise QueryError(
            f"pool sizes disagree: {len(ids)} ids, {scores.shape[0]} scores, "
            f"{features.shape[0]} feature rows",
            hint="build ids, scores and features from the same rows",
        )
    if ids and features.shape[1] == 0:
        raise QueryError("features have 0 columns", hint="pass at least one feature per image")


def _check_values(ids: tuple, scores: np.ndarray, features: np.ndarray) -> None:
    if not all(isinstance(i, str) for i in ids):
        raise QueryError("every id must be a str", hint="pass the pool's sample ids as strings")
    if len(set(ids)) != len(ids):
        raise QueryError("ids repeat in the pool", hint="list each sample once")
    if not np.isfinite(scores).all():
        bad = ids[int(np.flatnonzero(~np.isfinite(scores))[0])]
        raise QueryError(
            f"score of {bad!r} is NaN or infinite", hint="re-score the pool with the current model"
        )
    if scores.size and scores.min() < 0.0:
        raise QueryError(
            f"scores must be ≥ 0, got {scores.min():.4g}",
            hint="use an informativeness score from dal.scoring (higher = more informative)",
        )
    if not np.isfinite(features).all():
        raise QueryError(
            "features contain NaN or infinity", hint="re-extract features with the current model"
        )


class _Ranked(NamedTuple):
    """The candidate set after merging with labelled images and ranking by (-score, id).

    Features stay in their original row order (`rows` maps rank → row): gathering a 100kx256 pool
    would copy 100 MB for strategies that never look at it.
    """

    ids: np.ndarray
    scores: np.ndarray
    rows: np.ndarray
    features: np.ndarray
    anchors: np.ndarray | None  # labelled features, for strategies that start from them


def _check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 0:
        raise QueryError(f"k must be an int ≥ 0, got {k!r}", hint="set the query batch size k")


def _merge(pool: Candidates, labelled: Candidates | None, allow_labelled: bool) -> Candidates:
    """The images eligible for selection: the pool without (or with) the labelled set."""
    if labelled is None or len(labelled) == 0:
        return pool
    if len(pool) == 0:
        return labelled if allow_labelled else pool
    if pool.features.shape[1] != labelled.features.shape[1]:
        raise QueryError(
            f"pool features are {pool.features.shape[1]}-d, labelled features "
            f"{labelled.features.shape[1]}-d",
            hint="extract both with the same model",
        )
    taken = set(labelled.ids)
    if not allow_labelled:
        keep = np.array([i not in taken for i in pool.ids], dtype=bool)
        return _subset(pool, keep)
    fresh = set(pool.ids)
    extra = _subset(labelled, np.array([i not in fresh for i in labelled.ids], dtype=bool))
    return Candidates(
        ids=pool.ids + extra.ids,
        scores=np.concatenate([pool.scores, extra.scores]),
        features=np.concatenate([pool.features, extra.features]),
    )


def _subset(c: Candidates, keep: np.ndarray) -> Candidates:
    if keep.all():
        return c
    ids = tuple(i for i, k in zip(c.ids, keep, strict=True) if k)
    return Candidates(ids=ids, scores=c.scores[keep], features=c.features[keep])


def _prepare(
    pool: Candidates, k: int, labelled: Candidates | None, allow_labelled: bool
) -> _Ranked:
    _check_k(k)
    merged = _merge(pool, labelled, allow_labelled)
    ids = np.array(merged.ids, dtype=str)
    order = np.lexsort((ids, -merged.scores))
    anchors = labelled.features if labelled is not None and len(labelled) else None
    return _Ranked(ids[order], merged.scores[order], order, merged.features, anchors)


def _unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length; an all-zero row stays zero."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1).astype(x.dtype)


def _sq_dist(x: np.ndarray, x_sq: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Squared euclidean distance of every row of x to one point c (x_sq = row norms²)."""
    return np.maximum(x_sq - 2.0 * (x @ c) + float(c @ c), 0.0)


def select_random(
    pool: Candidates,
    k: int,
    *,
    beta: float = 2.0,
    seed: int = 0,
    labelled: Candidates | None = None,
    allow_labelled: bool = False,
) -> list[str]:
    """k images drawn uniformly without replacement (the paper's baseline); ignores β."""
    r = _prepare(pool, k, labelled, allow_labelled)
    pick = np.random.default_rng(seed).choice(len(r.ids), size=min(k, len(r.ids)), replace=False)
    return [str(i) for i in r.ids[pick]]


def select_margin(
    pool: Candidates,
    k: int,
    *,
    beta: float = 2.0,
    seed: int = 0,
    labelled: Candidates | None = None,
    allow_labelled: bool = False,
) -> list[str]:
    """The k highest scores, ties by id (Algorithm 1); ignores β and seed."""
    r = _prepare(pool, k, labelled, allow_labelled)
    return [str(i) for i in r.ids[:k]]


def _dbal_weights(scores: np.ndarray) -> np.ndarray:
    """Scores as KMeans sample weights, floored above zero.

    All-zero weights make k-means++ divide by zero, and zero-weight points can never seed a
    centre, so a pool with fewer positive scores than k would get duplicate centres. A floor of
    1e-6 of the top score changes nothing else; an all-zero pool clusters with uniform weights.
    """
    top = float(scores.max())
    return np.maximum(scores, 1e-6 * top) if top > 0 else np.ones_like(scores)


def _nearest_untaken(x: np.ndarray, km: KMeans, weights: np.ndarray) -> list[int]:
    """One row per non-empty cluster: the nearest to its centre that is not yet taken.

    Heaviest clusters choose first. Duplicate features leave some clusters empty; those get no
    pick here and the caller fills up in rank order.
    """
    k = km.cluster_centers_.shape[0]
    mass = np.bincount(km.labels_, weights=weights, minlength=k)
    counts = np.bincount(km.labels_, minlength=k)
    order = [c for c in np.argsort(-mass, kind="stable") if counts[c] > 0]
    x_sq = np.einsum("ij,ij->i", x, x)
    taken: list[int] = []
    seen: set[int] = set()
    for c in order:
        centre = km.cluster_centers_[c].astype(x.dtype)
        for i in np.argsort(_sq_dist(x, x_sq, centre), kind="stable"):
            if int(i) not in seen:
                taken.append(int(i))
                seen.add(int(i))
                break
    return taken


def select_dbal(
    pool: Candidates,
    k: int,
    *,
    beta: float = 2.0,
    seed: int = 0,
    labelled: Candidates | None = None,
    allow_labelled: bool = False,
) -> list[str]:
    """Diverse mini-batch AL (Zhdanov 2019; the paper's Algorithm 2).

    Keep the top ⌈β·k⌉ by score, cluster them into k with score-weighted KMeans++, take the image
    nearest each centre (no repeats), and fill any shortfall from the kept images in rank order.
    """
    if not (isinstance(beta, numbers.Real) and math.isfinite(beta) and beta >= 1.0):
        raise QueryError(f"beta must be a number ≥ 1, got {beta!r}", hint="the paper uses β = 2")
    r = _prepare(pool, k, labelled, allow_labelled)
    # The epsilon keeps 1.1·10 = 11.000000000000002 from pre-filtering 12; a β·k beyond the
    # pool (even one that overflows to inf) keeps the whole pool.
    wanted = beta * k - 1e-9
    m = min(len(r.ids), math.ceil(wanted)) if wanted < len(r.ids) else len(r.ids)
    if m <= k:
        return [str(i) for i in r.ids[:k]]
    # scikit-learn loads here, not at import: a second and more that the agent's CLI, which
    # only reads the pool, should not pay.
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

    x = _unit(r.features[r.rows[:m]])
    weights = _dbal_weights(r.scores[:m])
    km = KMeans(n_clusters=k, init="k-means++", n_init=KMEANS_N_INIT, random_state=seed)
    with warnings.catch_warnings():
        # Fewer distinct points than k is expected with duplicate frames; the fill handles it.
        warnings.simplefilter("ignore", ConvergenceWarning)
        km.fit(x, sample_weight=weights)
    picks = _nearest_untaken(x, km, weights)
    chosen = set(picks)
    picks += [i for i in range(m) if i not in chosen][: k - len(picks)]
    return [str(r.ids[i]) for i in picks]


def _anchor_distances(x: np.ndarray, x_sq: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """Squared distance from each row of x to its nearest anchor, in blocks to bound memory."""
    best = np.full(x.shape[0], np.inf, dtype=np.float64)
    step = max(1, DISTANCE_BLOCK // max(1, x.shape[0]))
    for start in range(0, anchors.shape[0], step):
        a = anchors[start : start + step]
        d = x_sq[:, None] - 2.0 * (x @ a.T) + np.einsum("ij,ij->i", a, a)[None, :]
        best = np.minimum(best, np.maximum(d.min(axis=1), 0.0))
    return best


def select_coreset(
    pool: Candidates,
    k: int,
    *,
    beta: float = 2.0,
    seed: int = 0,
    labelled: Candidates | None = None,
    allow_labelled: bool = False,
) -> list[str]:
    """Core-set by k-centre greedy (Sener & Savarese 2018): repeatedly take the image farthest
    from everything chosen so far.

    "Chosen so far" starts as the labelled features when `labelled` is given (what the model has
    already seen), else as the top-scoring image, so the start is deterministic and informative.
    Distance ties go to the better-ranked image. Ignores β and seed.
    """
    r = _prepare(pool, k, labelled, allow_labelled)
    if len(r.ids) <= k:
        return [str(i) for i in r.ids]
    if k == 0:
        return []
    x = _unit(r.features[r.rows])
    x_sq = np.einsum("ij,ij->i", x, x)
    picks: list[int] = []
    if r.anchors is not None:
        nearest = _anchor_distances(x, x_sq, _unit(r.anchors).astype(x.dtype))
    else:
        picks.append(0)
        nearest = _sq_dist(x, x_sq, x[0]).astype(np.float64)
        nearest[0] = -np.inf
    while len(picks) < k:
        i = int(np.argmax(nearest))  # first maximum = best-ranked among equally far images
        picks.append(i)
        nearest = np.minimum(nearest, _sq_dist(x, x_sq, x[i]))
        nearest[i] = -np.inf  # taken; also keeps duplicates of taken images selectable
    return [str(r.ids[i]) for i in picks]


Strategy = Callable[..., list[str]]

STRATEGIES: dict[str, Strategy] = {
    "random": select_random,
    "margin": select_margin,
    "dbal": select_dbal,
    "coreset": select_coreset,
}


def select(
    strategy: str,
    pool: Candidates,
    k: int,
    *,
    beta: float = 2.0,
    seed: int = 0,
    labelled: Candidates | None = None,
    allow_labelled: bool = False,
) -> list[str]:
    """Run the strategy named `strategy` (a key of STRATEGIES) and return the chosen ids."""
    if strategy not in STRATEGIES:
        raise QueryError(
            f"unknown query strategy {strategy!r}",
            hint=f"choose one of {', '.join(sorted(STRATEGIES))}",
        )
    return STRATEGIES[strategy](
        pool, k, beta=beta, seed=seed, labelled=labelled, allow_labelled=allow_labelled
    )

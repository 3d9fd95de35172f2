"""Query strategies: the right number of distinct ids, from the right images, reproducibly."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dal import strategies
from dal.errors import DalError
from dal.strategies import STRATEGIES, Candidates, QueryError, select

NAMES = sorted(STRATEGIES)


def pool(
    n: int, d: int = 4, seed: int = 0, scores: np.ndarray | None = None, prefix: str = "img"
) -> Candidates:
    rng = np.random.default_rng(seed)
    return Candidates(
        ids=[f"{prefix}{i:04d}" for i in range(n)],
        scores=rng.random(n) * 10 if scores is None else scores,
        features=rng.normal(size=(n, d)).astype(np.float32),
    )


def top_ids(c: Candidates, m: int) -> set[str]:
    """The m best by (-score, id), the ranking every strategy promises."""
    ranked = sorted(zip(c.ids, c.scores, strict=True), key=lambda t: (-t[1], t[0]))
    return {i for i, _ in ranked[:m]}


def blobs(scores: list[float], centres: list[int], d: int = 8) -> Candidates:
    """Tight clusters around orthogonal directions: image i sits near axis centres[i]."""
    rng = np.random.default_rng(1)
    feats = np.eye(d)[centres] * 10 + rng.normal(scale=0.01, size=(len(centres), d))
    return Candidates([f"b{i:02d}" for i in range(len(centres))], np.array(scores), feats)


# --- the paper's strategies ---------------------------------------------------------------


def test_margin_takes_the_k_highest_with_ties_by_id() -> None:
    c = Candidates(["d", "c", "b", "a", "e"], np.array([1.0, 3.0, 3.0, 0.5, 3.0]), np.eye(5))
    assert select("margin", c, 2) == ["b", "c"]
    assert select("margin", c, 4) == ["b", "c", "e", "d"]


def test_dbal_picks_one_per_cluster_where_margin_piles_into_one() -> None:
    # Top 6 (β·k with k=3): four from cluster 0, one each from clusters 1 and 2.
    c = blobs([9, 9.5, 8.9, 9.2, 5, 4, 1, 1, 1], [0, 0, 0, 0, 1, 2, 3, 3, 3])
    axis = {cid: ax for cid, ax in zip(c.ids, [0, 0, 0, 0, 1, 2, 3, 3, 3], strict=True)}
    assert {axis[i] for i in select("margin", c, 3)} == {0}
    for seed in range(5):
        got = select("dbal", c, 3, seed=seed)
        assert {axis[i] for i in got} == {0, 1, 2}


def test_dbal_never_leaves_the_prefilter() -> None:
    c = pool(200)
    for beta in (1.0, 1.5, 2.0, 4.0):
        got = select("dbal", c, 10, beta=beta)
        assert len(set(got)) == 10
        assert set(got) <= top_ids(c, math.ceil(beta * 10))


def test_dbal_with_beta_one_is_margin() -> None:
    c = pool(50)
    assert set(select("dbal", c, 7, beta=1.0)) == set(select("margin", c, 7))


def test_coreset_spreads_over_clusters() -> None:
    c = blobs([9, 8, 7, 6, 5, 4], [0, 0, 0, 0, 1, 2])
    got = select("coreset", c, 3)
    assert got[0] == "b00"  # starts from the top-scoring image
    assert set(got) == {"b00", "b04", "b05"}


def test_coreset_starts_from_labelled_features() -> None:
    c = blobs([9, 8, 7, 6, 5, 4], [0, 0, 0, 0, 1, 2])
    seen = Candidates(["old"], np.zeros(1), np.eye(8)[[0]] * 3.0)  # scale differs: normalised
    assert set(select("coreset", c, 2, labelled=seen)) == {"b04", "b05"}


def test_coreset_block_size_does_not_change_the_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    c = pool(300, d=6)
    seen = pool(40, d=6, seed=3, prefix="old")
    whole = select("coreset", c, 12, labelled=seen)
    monkeypatch.setattr(strategies, "DISTANCE_BLOCK", 300)  # one labelled row per block
    assert select("coreset", c, 12, labelled=seen) == whole


# --- labelled images ----------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_labelled_images_are_excluded_unless_allowed(name: str) -> None:
    c = pool(30)
    labelled = Candidates(["img0000", "lab"], np.array([100.0, 99.0]), np.ones((2, 4)))
    got = select(name, c, 29, labelled=labelled)
    assert "img0000" not in got and "lab" not in got
    assert len(got) == 29
    both = select(name, c, 31, labelled=labelled, allow_labelled=True)
    assert set(both) == set(c.ids) | {"lab"}


@pytest.mark.parametrize("name", NAMES)
def test_empty_pool_with_labelled_images(name: str) -> None:
    empty = Candidates([], np.zeros(0), np.zeros((0, 0)))
    labelled = pool(6, prefix="lab")
    assert select(name, empty, 3, labelled=labelled) == []
    got = select(name, empty, 3, labelled=labelled, allow_labelled=True)
    assert len(set(got)) == 3 and set(got) <= set(labelled.ids)


def test_allow_labelled_lets_margin_reselect_a_labelled_image() -> None:
    c = pool(10)
    labelled = Candidates(["lab"], np.array([100.0]), np.ones((1, 4)))
    assert select("margin", c, 1, labelled=labelled, allow_labelled=True) == ["lab"]
    assert select("margin", c, 1, labelled=labelled) != ["lab"]


# --- determinism --------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_answer_whatever_the_row_order(name: str) -> None:
    c = pool(120)
    perm = np.random.default_rng(7).permutation(len(c))
    shuffled = Candidates([c.ids[i] for i in perm], c.scores[perm], c.features[perm])
    first = select(name, c, 10, seed=3)
    assert select(name, c, 10, seed=3) == first
    assert select(name, shuffled, 10, seed=3) == first


def test_random_depends_on_the_seed() -> None:
    c = pool(100)
    assert len({tuple(select("random", c, 10, seed=s)) for s in range(5)}) > 1


# --- degenerate pools ---------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(("n", "k"), [(0, 5), (3, 5), (5, 5), (7, 5), (9, 5), (20, 0)])
def test_small_pools_and_k_zero(name: str, n: int, k: int) -> None:
    c = pool(n)
    got = select(name, c, k)
    assert len(got) == len(set(got)) == min(n, k)
    assert set(got) <= set(c.ids)


@pytest.mark.parametrize("name", NAMES)
def test_all_zero_scores_still_give_k_distinct(name: str) -> None:
    got = select(name, pool(40, scores=np.zeros(40)), 8)
    assert len(set(got)) == 8


@pytest.mark.parametrize("name", NAMES)
def test_identical_features_still_give_k_distinct(name: str) -> None:
    c = Candidates([f"f{i}" for i in range(30)], np.linspace(0, 3, 30), np.ones((30, 16)))
    got = select(name, c, 10)
    assert len(set(got)) == 10
    if name == "dbal":  # one real cluster: its medoid, then the rest of the top 20 by score
        assert set(got) <= top_ids(c, 20)
        assert set(got) == top_ids(c, 10)


@pytest.mark.parametrize("name", NAMES)
def test_one_dimensional_and_zero_features(name: str) -> None:
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(25, 1))
    feats[:5] = 0.0  # a zero vector has no direction; it must not produce NaN
    c = Candidates([f"x{i}" for i in range(25)], rng.random(25), feats)
    assert len(set(select(name, c, 6))) == 6


# --- rejected input -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ids", "scores", "features", "fragment"),
    [
        (["a", "b"], [1.0, np.nan], np.zeros((2, 2)), "'b'"),
        (["a", "b"], [1.0, np.inf], np.zeros((2, 2)), "NaN or infinite"),
        (["a", "b"], [1.0, -0.5], np.zeros((2, 2)), "≥ 0"),
        (["a", "b"], [1.0], np.zeros((2, 2)), "disagree"),
        (["a", "b"], [1.0, 2.0], np.zeros((3, 2)), "disagree"),
        (["a", "a"], [1.0, 2.0], np.zeros((2, 2)), "repeat"),
        (["a", 7], [1.0, 2.0], np.zeros((2, 2)), "str"),
        (["a", "b"], [1.0, 2.0], np.zeros(2), "2-D"),
        (["a", "b"], [1.0, 2.0], np.zeros((2, 0)), "0 columns"),
        (["a", "b"], [1.0, 2.0], np.array([[0.0, np.nan], [1, 1]]), "features"),
    ],
)
def test_bad_candidates_are_rejected(ids, scores, features, fragment: str) -> None:
    with pytest.raises(QueryError, match=fragment) as info:
        Candidates(ids, np.asarray(scores), features)
    assert isinstance(info.value, ValueError) and isinstance(info.value, DalError)
    assert info.value.hint


@pytest.mark.parametrize("k", [-1, 2.0, True, "3"])
def test_bad_k_is_rejected(k: object) -> None:
    with pytest.raises(QueryError, match="k must be"):
        select("margin", pool(5), k)  # type: ignore[arg-type]


@pytest.mark.parametrize("beta", [0.5, math.nan, math.inf, "2", None])
def test_bad_beta_is_rejected(beta: object) -> None:
    with pytest.raises(QueryError, match="beta"):
        select("dbal", pool(5), 2, beta=beta)  # type: ignore[arg-type]


def test_unknown_strategy_names_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="unknown query strategy") as info:
        select("badge", pool(5), 2)
    assert all(name in str(info.value) for name in NAMES)


def test_labelled_features_must_match_the_pool() -> None:
    with pytest.raises(QueryError, match="4-d"):
        select("coreset", pool(5), 2, labelled=pool(3, d=3, prefix="old"))


# --- properties ---------------------------------------------------------------------------

SCORES = st.sampled_from([0.0, 0.0, 1.0, 2.5]) | st.floats(0, 20, allow_subnormal=False)


@st.composite
def pools(draw: st.DrawFn) -> Candidates:
    """Small pools rich in ties: repeated scores, integer (often duplicate) features."""
    n = draw(st.integers(0, 40))
    d = draw(st.integers(1, 4))
    scores = draw(st.lists(SCORES, min_size=n, max_size=n))
    flat = draw(st.lists(st.integers(-2, 2), min_size=n * d, max_size=n * d))
    features = np.array(flat, dtype=np.float64).reshape(n, d)
    return Candidates([f"p{i}" for i in range(n)], np.array(scores, dtype=float), features)


@settings(max_examples=60, deadline=None)
@given(
    c=pools(),
    k=st.integers(0, 15),
    beta=st.sampled_from([1.0, 1.5, 2.0, 3.0]),
    seed=st.integers(0, 3),
)
def test_every_strategy_returns_min_k_n_distinct_pool_ids(
    c: Candidates, k: int, beta: float, seed: int
) -> None:
    want = min(k, len(c))
    for name in NAMES:
        got = select(name, c, k, beta=beta, seed=seed)
        assert len(got) == len(set(got)) == want, name
        assert set(got) <= set(c.ids), name
    assert set(select("margin", c, k)) == top_ids(c, k)
    assert set(select("dbal", c, k, beta=beta, seed=seed)) <= top_ids(c, math.ceil(beta * k))

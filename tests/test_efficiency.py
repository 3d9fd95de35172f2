"""Label efficiency, the paper's k-vs-2k claim, and how the tables name the start models."""

from __future__ import annotations

import pytest

from dal.trainer.efficiency import (
    Reach,
    claim_lines,
    efficiency_cells,
    interpolate,
    labels_to_reach,
)
from dal.trainer.report import blocks

RANDOM_CURVE = [(0, 0.1), (10, 0.3), (20, 0.5), (40, 0.6)]


def test_labels_to_reach_interpolates_on_the_first_crossing() -> None:
    for target, labels in ((0.4, 15.0), (0.55, 30.0), (0.3, 10.0)):
        reach = labels_to_reach(RANDOM_CURVE, target)
        assert reach.labels == pytest.approx(labels) and reach.bound == ""
    # a dip does not hide the first place random reached the AP
    wavy = [(0, 0.0), (10, 0.5), (20, 0.2), (30, 0.6)]
    assert labels_to_reach(wavy, 0.4).labels == pytest.approx(8.0)


def test_labels_to_reach_bounds_off_the_curve() -> None:
    beyond = labels_to_reach(RANDOM_CURVE, 0.9)
    assert beyond == Reach(40.0, ">") and beyond.format() == "> 40"
    below = labels_to_reach(RANDOM_CURVE, 0.05)
    assert below == Reach(0.0, "≤") and below.format() == "≤ 0"
    assert Reach(12.34).format() == "12.3"
    assert labels_to_reach([], 0.3) is None


def test_interpolate_stays_inside_the_curve() -> None:
    assert interpolate(RANDOM_CURVE, 30) == pytest.approx(0.55)
    assert interpolate(RANDOM_CURVE, 41) is None
    assert interpolate(RANDOM_CURVE, -1) is None


def _row(strategy: str, labelled: int, seed: int, ap: float, mode: str = "single") -> dict:
    return {
        "setting": "R",
        "mode": mode,
        "strategy": strategy,
        "k": labelled - 10 if mode == "single" else labelled,
        "seed": seed,
        "cycle": 0 if mode == "start" else 1,
        "labelled": labelled,
        "AP": ap,
        "AP50": ap,
        "wall_s": 1.0,
    }


def _rows() -> list[dict]:
    """R with --initial 10: start models at 10, random at 15, 20, 30; margin at 15, 20."""
    rows = [_row("initial", 10, s, 0.2, mode="start") for s in (0, 1)]
    for labelled, ap in ((15, 0.3), (20, 0.4), (30, 0.5)):
        rows += [_row("random", labelled, s, ap + 0.01 * (1 - 2 * s)) for s in (0, 1)]
    for labelled, ap in ((15, 0.45), (20, 0.48)):
        rows += [_row("margin", labelled, s, ap) for s in (0, 1)]
    return rows


def test_efficiency_column_reads_randoms_mean_curve() -> None:
    cells = efficiency_cells(blocks(_rows()))
    margin = ("R", "single", "margin", 0)
    # margin 0.45 at 15 labels: random's mean curve 0.4 at 20, 0.5 at 30 -> 25 labels
    assert cells[(margin, 15)] == "25"
    assert cells[(margin, 20)] == "28"
    assert (margin, 10) not in cells  # the shared start model is no query result
    assert not [key for key in cells if key[0][2] == "random"]


def test_claim_compares_queried_labels_beyond_the_start() -> None:
    lines = claim_lines(blocks(_rows()))
    # k = 5 beyond L0 = 10: random at 2k means 20 labels (0.4) < margin's 0.45 at 15
    assert any("k = 5 queried labels (15 in all)" in ln and "holds" in ln for ln in lines)
    # k = 10: random at 30 labels is 0.5 > margin's 0.48
    assert any("k = 10 queried labels (20 in all)" in ln and "fails" in ln for ln in lines)


def test_claim_says_when_random_at_2k_was_not_measured() -> None:
    rows = [r for r in _rows() if not (r["strategy"] == "random" and r["labelled"] == 30)]
    lines = claim_lines(blocks(rows))
    assert any("k = 10" in ln and "not testable" in ln for ln in lines)


def test_start_models_are_described_as_what_they_were() -> None:
    from dal.trainer.report import start_models, timing_summary

    base = {**_row("synthetic", 0, 0, 0.06, mode="base"), "setting": "S", "k": 0}
    sr = {**_row("random", 5, 0, 0.3), "setting": "S+R", "k": 5}
    given = start_models([base, sr], {"base": "/models/m0.pt"})
    assert given == ["S+R start model M0: the given checkpoint /models/m0.pt; AP 0.060."]
    assert "(given checkpoint)" in timing_summary([base], base_given=True)
    assert "synthetic" not in timing_summary([base], base_given=True)
    trained = start_models([base, sr], {"synthetic": "renders.json", "base_epochs": 10})[0]
    assert "synthetic images only (renders.json, 10 epochs" in trained
    # R without start rows: said plainly that it starts from the backbone alone
    (r_line,) = start_models([_row("random", 12, 0, 0.1)], {})
    assert r_line.startswith("R start: the ImageNet backbone alone")
    lines = start_models(_rows(), {})
    assert lines == [
        "R start model M(L0), one per seed: trained from the backbone on 10 random real labels "
        "L0 drawn with that seed (the same L0 for every strategy of the seed); "
        "seed 0: AP 0.200, seed 1: AP 0.200."
    ]

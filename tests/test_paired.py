"""Pairing strategy runs with random's run of the same seed, and what the report says without
detections on disk (the intervals themselves: tests/test_bootstrap.py and the --initial run)."""

from __future__ import annotations

from pathlib import Path

from dal.trainer.bootstrap import Interval
from dal.trainer.paired import paired_report, pairs


def _row(strategy: str, mode: str, seed: int, labelled: int, ap: float) -> dict:
    return {
        "setting": "R",
        "mode": mode,
        "strategy": strategy,
        "k": 1 if mode == "multi" else labelled - 3,
        "seed": seed,
        "cycle": 1,
        "labelled": labelled,
        "AP": ap,
        "detections": "",
    }


ROWS = [
    _row("initial", "start", 0, 3, 0.1),
    _row("initial", "start", 1, 3, 0.2),
    _row("random", "single", 0, 5, 0.3),
    _row("random", "single", 1, 5, 0.4),
    _row("margin", "single", 0, 5, 0.5),
    _row("margin", "single", 1, 5, 0.3),
    _row("margin", "single", 2, 5, 0.9),  # no random run of seed 2: not paired
    _row("margin", "multi", 0, 4, 0.6),  # random never had 4 labels: not paired
    _row("margin", "multi", 0, 5, 0.7),  # no random chain: random's single cycle
]


def test_pairs_match_seed_and_labels_and_fall_back_to_the_single_cycle() -> None:
    found = {(r["mode"], r["seed"], r["labelled"]): p for r, p in pairs(ROWS)}
    assert set(found) == {("single", 0, 5), ("single", 1, 5), ("multi", 0, 5)}
    assert all(p["strategy"] == "random" and p["mode"] == "single" for p in found.values())
    assert found[("single", 1, 5)]["seed"] == 1
    chain = {**ROWS[2], "mode": "multi", "k": 1, "AP": 0.35}
    again = {(r["mode"], r["seed"]): p for r, p in pairs([*ROWS, chain])}
    assert again[("multi", 0)] is chain  # random's own chain when it ran one


def test_without_detections_the_differences_come_without_intervals(tmp_path: Path) -> None:
    report = paired_report(ROWS, tmp_path, None, requested=200)
    assert report.resamples == 0 and any("validation file" in n for n in report.notes)
    cells = {(c.block, c.labelled): c for c in report.cells}
    single = cells[(("R", "single", "margin", 0), 5)]
    assert single.by_seed[0] == 0.5 - 0.3 and single.by_seed[1] == 0.3 - 0.4
    assert not isinstance(single.mean, Interval)
    assert abs(single.mean - ((0.5 - 0.3) + (0.3 - 0.4)) / 2) < 1e-12

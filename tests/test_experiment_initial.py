"""`dal experiment --initial`: R as standard real-only active learning, end to end.

A real (tiny) run through the CLI: per seed a start model M(L0) on 3 random pool images, then
random, margin and dbal each query 2 more from the rest of the pool, fine-tuning from M(L0),
plus a 2-cycle margin chain; then the report again from disk (--report-only), intervals and
all.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from itertools import product
from pathlib import Path

import pytest
from cli_run import run_cli

from dal.coco import load_coco
from dal.procedural import make_tiny
from dal.trainer.checkpoint import load_checkpoint
from dal.trainer.protocol_plan import plan, plan_notes
from dal.trainer.results import read_results

INITIAL = 3
SEEDS = (0, 1)
STRATEGIES = ("random", "margin", "dbal")


@dataclass
class Run:
    data: Path
    out: Path
    stdout: str
    report_stdout: str
    rows: list[dict]


def _args(data: Path, out: Path, initial: int = INITIAL) -> list[str]:
    return [
        "experiment",
        "--real",
        str(data / "pool" / "annotations.json"),
        "--val",
        str(data / "val" / "annotations.json"),
        "--out",
        str(out),
        "--settings",
        "R",
        "--initial",
        str(initial),
        "--strategies",
        *STRATEGIES,
        "--seeds",
        *map(str, SEEDS),
        "--k",
        "2",
        "--cycles",
        "2",
        "--cycle-k",
        "1",
        "--cycle-strategies",
        "margin",
        "--backbone-weights",
        "none",
        "--input-size",
        "160x96",
        "--base-epochs",
        "1",
        "--steps",
        "2",
        "--epochs",
        "1",
        "--batch-size",
        "2",
        "--threads",
        "1",
        "--keep-checkpoints",
        "--no-progress",
        "--bootstrap",
        "200",
    ]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    root = tmp_path_factory.mktemp("initial")
    data = root / "data"
    make_tiny(data / "pool", 10, classes=1, seed=2, style="workbench")
    make_tiny(data / "val", 4, classes=1, seed=3, style="workbench")
    out = root / "exp"
    code, stdout = run_cli(_args(data, out))
    assert code == 0, stdout
    code, report = run_cli(["experiment", "--report-only", "--out", str(out), "--bootstrap", "200"])
    assert code == 0, report
    return Run(data, out, stdout, report, read_results(out / "results.csv"))


def _starts(rows: list[dict]) -> dict[int, dict]:
    return {r["seed"]: r for r in rows if r["mode"] == "start"}


def _ids(text: str) -> list[int]:
    return [int(i) for i in str(text).split(";") if i]


def test_each_seed_has_one_start_model_on_its_own_l0(run: Run) -> None:
    starts = _starts(run.rows)
    assert sorted(starts) == list(SEEDS)
    pool_ids = {rec.id for rec in load_coco(run.data / "pool" / "annotations.json").images}
    for row in starts.values():
        assert (row["setting"], row["strategy"], row["k"]) == ("R", "initial", INITIAL)
        assert row["labelled"] == INITIAL and 0.0 <= row["AP"] <= 1.0
        l0 = _ids(row["picked"])
        assert len(set(l0)) == INITIAL and set(l0) <= pool_ids
        assert (run.out / row["detections"]).is_file()
    assert _ids(starts[0]["picked"]) != _ids(starts[1]["picked"])  # the seed draws L0


def test_every_strategy_ran_for_every_seed_from_the_same_l0(run: Run) -> None:
    single = [r for r in run.rows if r["mode"] == "single"]
    assert {(r["strategy"], r["seed"]) for r in single} == set(product(STRATEGIES, SEEDS))
    starts = _starts(run.rows)
    for row in single:
        l0 = _ids(starts[row["seed"]]["picked"])
        picked = _ids(row["picked"])
        assert row["labelled"] == INITIAL + 2 and len(picked) == 2
        assert not set(picked) & set(l0)  # queried from the rest of the pool
        run_dir = run.out / "runs" / f"R-single-{row['strategy']}-k2-s{row['seed']}" / "c1"
        trained_on = json.loads((run_dir / "labelled.json").read_text())["images"]
        assert {im["source_id"] for im in trained_on} == set(l0) | set(picked)
        # fine-tuned from this seed's M(L0), with this seed
        settings = load_checkpoint(run_dir / "best.pt").training_summary["settings"]
        start_dir = run.out / "runs" / f"R-start-n{INITIAL}-s{row['seed']}"
        assert Path(settings["init"]) == start_dir / "best.pt"
        assert settings["seed"] == row["seed"]
        assert (run.out / row["detections"]).is_file()
    start_settings = load_checkpoint(start_dir / "best.pt").training_summary["settings"]
    assert start_settings["init"] is None  # M(L0) comes from the backbone


def test_the_cycles_grow_l_from_l0(run: Run) -> None:
    starts = _starts(run.rows)
    for seed in SEEDS:
        c1, c2 = sorted(
            (r for r in run.rows if r["mode"] == "multi" and r["seed"] == seed),
            key=lambda r: r["cycle"],
        )
        assert (c1["labelled"], c2["labelled"]) == (INITIAL + 1, INITIAL + 2)
        taken = _ids(starts[seed]["picked"]) + _ids(c1["picked"]) + _ids(c2["picked"])
        assert len(set(taken)) == len(taken) == INITIAL + 2


def test_the_plan_and_its_progress_count_the_start_models(run: Run) -> None:
    # 6 single runs + 2 chains x 2 cycles, and one start model per seed
    assert "12 runs planned (10 query runs, 2 R start models), 0 already" in run.stdout
    assert "R start model seed 0: 3 labelled" in run.stdout
    assert "[12/12]" in run.stdout and "min left" in run.stdout
    assert "R without --initial" not in run.stdout
    assert "10 runs done now, 0 skipped" in run.stdout


def test_table_names_the_start_models_and_the_intervals(run: Run) -> None:
    table = (run.out / "table.md").read_text()
    assert f"R start model M(L0), one per seed: trained from the backbone on {INITIAL} random" in (
        table
    )
    for seed, row in _starts(run.rows).items():
        assert f"seed {seed}: AP {row['AP']:.3f}" in table
    assert "synthetic" not in table  # no S+R here, and R's start is not called synthetic
    assert "| **R Random** | 3 |" in table and "| **R Max. Margin** | 3 |" in table
    assert "Random labels for this AP" in table
    assert "## Paired difference to random" in table
    assert "200 resamples" in table and "4 validation images" in table
    assert "| **R Max. Margin** | 5 |" in table.split("## Paired difference")[1]
    assert "## Does the best strategy at k labels match random at 2k?" in table
    for name in ("fig6_single_cycle.png", "fig8_multi_cycle.png", "label_efficiency.png"):
        assert (run.out / name).stat().st_size > 10_000
    # the intervals came from disk, with each run's resample APs cached beside its detections
    assert list((run.out / "runs").glob("*/c1/detections.bootstrap.npz"))


def test_initial_is_part_of_the_fingerprint(run: Run, capsys: pytest.CaptureFixture) -> None:
    code, _ = run_cli(_args(run.data, run.out, initial=4))
    assert code == 1
    assert "initial: 3 -> 4" in capsys.readouterr().err


def test_plan_without_initial_says_r_runs_random_only() -> None:
    chains = plan(["R", "S+R"], ["random", "margin"], [5], [0, 1], 2, 5)
    assert {c.strategy for c in chains if c.setting == "R"} == {"random"}
    (note, cycles) = plan_notes(["R", "S+R"], ["random", "margin"], 2, 0)
    assert "R without --initial" in note and "random only" in note and "margin" in note
    assert "multi-cycle" in cycles
    assert plan_notes(["R"], ["random", "margin"], 2, 10) == []
    with_initial = plan(["R"], ["random", "margin"], [5], [0, 1], 2, 5, ["margin"], initial=10)
    assert {(c.mode, c.strategy, c.seed) for c in with_initial} == {
        ("single", "random", 0),
        ("single", "random", 1),
        ("single", "margin", 0),
        ("single", "margin", 1),
        ("multi", "margin", 0),
        ("multi", "margin", 1),
    }

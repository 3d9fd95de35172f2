"""`dal experiment`: the paper's protocol on tiny procedural data, its table, plots and resume.

One small experiment runs in two stages (the second adds a seed and a cycle), then once more
unchanged: every call must do exactly the runs results.csv lacks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch
from cli_run import run_cli
from PIL import Image

from dal.errors import ConfigError
from dal.procedural import make_tiny
from dal.trainer.experiment import run_experiment, write_report
from dal.trainer.protocol import Outcome
from dal.trainer.protocol_config import ProtocolConfig
from dal.trainer.protocol_plan import plan
from dal.trainer.protocol_steps import repeated_subset
from dal.trainer.report import markdown_table
from dal.trainer.results import read_results

SIZE = "160x96"


@dataclass
class Experiment:
    out: Path
    config: ProtocolConfig
    stage1_stdout: str
    stage2: Outcome
    rows: list[dict]


def _cli_args(data: Path, out: Path) -> list[str]:
    return [
        "experiment",
        "--real",
        str(data / "pool" / "annotations.json"),
        "--val",
        str(data / "val" / "annotations.json"),
        "--synthetic",
        str(data / "syn" / "annotations.json"),
        "--out",
        str(out),
        "--backbone-weights",
        "none",
        "--input-size",
        SIZE,
        "--base-epochs",
        "1",
        "--steps",
        "2",
        "--epochs",
        "1",
        "--batch-size",
        "2",
        "--k",
        "2",
        "--cycle-k",
        "2",
        "--threads",
        "1",  # on a shared 2-core CPU, 2 torch threads spin-wait and run several times slower
    ]


@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory) -> Experiment:
    root = tmp_path_factory.mktemp("experiment")
    data = root / "data"
    make_tiny(data / "syn", 8, classes=1, seed=1, style="synthetic")
    make_tiny(data / "pool", 8, classes=1, seed=2, style="workbench")
    make_tiny(data / "val", 3, classes=1, seed=3, style="workbench")
    out = root / "exp"

    # stage 1 through the CLI: seed 0, one cycle of the multi-cycle chain
    threads = torch.get_num_threads()
    code, stdout = run_cli([*_cli_args(data, out), "--seeds", "0", "--cycles", "1"])
    assert code == 0, stdout

    # stage 2 through the API: one more seed and one more cycle
    config = ProtocolConfig(
        real=data / "pool" / "annotations.json",
        val=data / "val" / "annotations.json",
        synthetic=data / "syn" / "annotations.json",
        out=out,
        backbone_weights="none",
        input_size=SIZE,
        base_epochs=1,
        steps=2,
        epochs=1,
        batch_size=2,
    )
    chains = plan(["R", "S+R"], ["random", "margin", "dbal", "coreset"], [2], [0, 1], 2, 2)
    torch.set_num_threads(1)
    try:
        stage2 = run_experiment(config, chains)
    finally:
        torch.set_num_threads(threads)
    write_report(out)
    return Experiment(out, config, stdout, stage2, read_results(out / "results.csv"))


def _row(rows: list[dict], **match: object) -> list[dict]:
    return [r for r in rows if all(r[k] == v for k, v in match.items())]


def test_stage_one_ran_every_planned_run_and_the_base(experiment: Experiment) -> None:
    # R random, S+R random, margin, dbal, coreset, multi-cycle dbal cycle 1
    assert "6 runs done now, 0 skipped" in experiment.stage1_stdout
    assert "| **S+R DBAL (β=2)** |" in experiment.stage1_stdout  # the table is printed


def test_resume_runs_only_what_results_csv_lacks(experiment: Experiment) -> None:
    # stage 2 added R and S+R random with seed 1, and cycle 2 of the multi-cycle chain
    assert experiment.stage2.trained == 3
    assert experiment.stage2.skipped == 6
    added = {(r["setting"], r["mode"], r["seed"], r["cycle"]) for r in experiment.stage2.rows}
    assert added == {("R", "single", 1, 1), ("S+R", "single", 1, 1), ("S+R", "multi", 0, 2)}


def test_results_rows_hold_the_protocol(experiment: Experiment) -> None:
    rows = experiment.rows
    assert len(rows) == 10  # 9 runs + the base model
    (base,) = _row(rows, mode="base")
    assert (base["setting"], base["k"], base["labelled"]) == ("S", 0, 0)
    for row in rows:
        assert 0.0 <= row["AP"] <= 1.0 and 0.0 <= row["AP50"] <= 1.0
        assert row["wall_s"] > 0 and not math.isnan(row["AP75"])
        if row["mode"] != "base":
            assert row["steps"] == 2
            assert len(row["picked"].split(";")) == 2
    # random ignores scores: the same seed picks the same images with and without M0
    for seed in (0, 1):
        (r,) = _row(rows, setting="R", strategy="random", seed=seed)
        (sr,) = _row(rows, setting="S+R", mode="single", strategy="random", seed=seed)
        assert r["picked"] == sr["picked"]
    # deterministic strategies run once, with the first seed
    assert [r["seed"] for r in _row(rows, strategy="margin")] == [0]
    # cycle 2 adds two new images to cycle 1's, after re-scoring with cycle 1's model
    c1, c2 = sorted(_row(rows, mode="multi"), key=lambda r: r["cycle"])
    assert (c1["labelled"], c2["labelled"]) == (2, 4)
    assert not set(c1["picked"].split(";")) & set(c2["picked"].split(";"))
    assert c1["picked"] == _row(rows, mode="single", strategy="dbal")[0]["picked"]


def test_table_and_plots_are_written(experiment: Experiment) -> None:
    table = (experiment.out / "table.md").read_text()
    assert "| Strategy | Real training images | AP seed 0 | AP seed 1 | AP (mean) |" in table
    for title in ("R Random", "S+R Random", "S+R Max. Margin", "S+R Core-set"):
        assert f"| **{title}** |" in table
    assert "| **S+R DBAL (β=2): 2 cycles of k=2** |" in table
    for name in ("fig6_single_cycle.png", "fig8_multi_cycle.png"):
        with Image.open(experiment.out / name) as img:
            assert img.format == "PNG" and img.width > 400


def test_an_unchanged_call_trains_nothing(experiment: Experiment) -> None:
    before = (experiment.out / "results.csv").read_bytes()
    args = [
        *_cli_args(experiment.config.real.parents[1], experiment.out),
        "--seeds",
        "0",
        "1",
        "--cycles",
        "2",
    ]
    code, stdout = run_cli(args)
    assert code == 0
    assert "0 runs done now, 9 skipped" in stdout
    assert (experiment.out / "results.csv").read_bytes() == before


def test_other_settings_in_the_same_folder_are_refused(experiment: Experiment) -> None:
    changed = replace(experiment.config, steps=3)
    with pytest.raises(ConfigError, match="steps: 2 -> 3"):
        run_experiment(changed, plan(["R"], ["random"], [2], [0]))


def test_plan_follows_the_paper() -> None:
    chains = plan(["R", "S+R"], ["random", "dbal"], [5, 10], [0, 1, 2], 3, 25)
    r = [c for c in chains if c.setting == "R"]
    assert {c.strategy for c in r} == {"random"} and len(r) == 6
    assert [c.seed for c in chains if c.strategy == "dbal" and c.mode == "single"] == [0, 0]
    (multi,) = [c for c in chains if c.mode == "multi"]
    assert (multi.setting, multi.k, multi.cycles) == ("S+R", 25, 3)
    with pytest.raises(ConfigError):
        plan(["R"], ["random"], [0], [0])


def test_repeated_subset_fills_the_steps(tmp_path: Path) -> None:
    from dal.coco import coco_from_dict, load_coco

    pool = load_coco(make_tiny(tmp_path / "pool", 4, classes=1, seed=2))
    doc = repeated_subset(pool, [2, 4], samples=5)
    assert [im["source_id"] for im in doc["images"]] == [2, 4, 2, 4, 2]
    copy = coco_from_dict(doc, image_root=pool.image_root)
    for rec in copy.images:
        original = pool.by_id(rec.extra["source_id"])
        assert rec.boxes.tolist() == original.boxes.tolist()


def test_table_layout_from_rows() -> None:
    def row(setting: str, mode: str, strategy: str, k: int, seed: int, ap: float) -> dict:
        labelled = 0 if mode == "base" else k
        return {
            "setting": setting,
            "mode": mode,
            "strategy": strategy,
            "k": k,
            "seed": seed,
            "cycle": 0 if mode == "base" else 1,
            "labelled": labelled,
            "AP": ap,
            "AP50": ap,
            "wall_s": 1.0,
        }

    rows = [
        row("S", "base", "synthetic", 0, 0, 0.5),
        row("S+R", "single", "random", 10, 0, 0.6),
        row("S+R", "single", "random", 10, 1, 0.7),
        row("S+R", "single", "margin", 10, 0, 0.8),
        row("R", "single", "random", 10, 0, 0.1),
    ]
    lines = markdown_table(rows).splitlines()
    assert lines[2] == "| **R Random** | 10 | 0.100 |  | 0.100 |  | 0.100 |"
    assert lines[3] == "| **S+R Random** | 0 |  |  | 0.500 |  | 0.500 |"
    assert lines[4] == "|  | 10 | 0.600 | 0.700 | 0.650 | 0.071 | 0.650 |"
    assert lines[5] == "| **S+R Max. Margin** | 0 |  |  | 0.500 |  | 0.500 |"
    assert lines[6] == "|  | 10 |  |  | 0.800 |  | 0.800 |"

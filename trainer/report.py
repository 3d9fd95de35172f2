"""Experiment results: the CSV every run appends to, and the paper's Table A1 made from it.

One row per finished run. The key columns (setting, mode, strategy, k, seed, cycle) name a run;
a row that exists means the run is done, which is what makes `dal experiment` resumable. The
file is rewritten atomically after every run, so a crash leaves the previous complete file.

Rows of the synthetic base model M0 use setting "S", mode "base", k 0, cycle 0: the 0-image
line of every S+R block, as in the paper.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from dal.errors import DatasetError
from dal.fileio import atomic_write_text

KEY_COLUMNS = ("setting", "mode", "strategy", "k", "seed", "cycle")
COLUMNS = (
    *KEY_COLUMNS,
    "labelled",
    "AP",
    "AP50",
    "AP75",
    "wall_s",
    "select_s",
    "train_s",
    "eval_s",
    "steps",
    "picked",
    "finished",
)
_INT_COLUMNS = ("k", "seed", "cycle", "labelled", "steps")
_FLOAT_COLUMNS = ("AP", "AP50", "AP75", "wall_s", "select_s", "train_s", "eval_s")

BASE_SETTING, BASE_MODE, BASE_STRATEGY = "S", "base", "synthetic"
STRATEGY_TITLES = {
    "random": "Random",
    "margin": "Max. Margin",
    "dbal": "DBAL (β=2)",
    "coreset": "Core-set",
}

Key = tuple[str, str, str, int, int, int]


def row_key(row: dict) -> Key:
    return (
        str(row["setting"]),
        str(row["mode"]),
        str(row["strategy"]),
        int(row["k"]),
        int(row["seed"]),
        int(row["cycle"]),
    )


def _typed(raw: dict[str, str], path: Path, line: int) -> dict:
    row: dict = dict(raw)
    try:
        for name in _INT_COLUMNS:
            row[name] = int(raw[name])
        for name in _FLOAT_COLUMNS:
            row[name] = float(raw[name]) if raw.get(name, "") != "" else math.nan
    except (KeyError, TypeError, ValueError) as err:
        raise DatasetError(
            f"{path}:{line}: malformed results row ({err})",
            hint="fix or delete that line; the run is then done again",
        ) from None
    return row


class ResultsFile:
    """results.csv: read once, appended to (rewritten atomically) after every run."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: dict[Key, dict] = {}
        if path.exists():
            for row in read_results(path):
                self.rows[row_key(row)] = row

    def done(self, key: Key) -> dict | None:
        return self.rows.get(key)

    def add(self, row: dict) -> None:
        self.rows[row_key(row)] = row
        atomic_write_text(self.path, to_csv(self.rows.values()))


def read_results(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in KEY_COLUMNS if c not in (reader.fieldnames or ())]
    if missing:
        raise DatasetError(
            f"{path}: columns {missing} missing from the header",
            hint="this is not a dal experiment results.csv; use another --out",
        )
    return [_typed(raw, path, n) for n, raw in enumerate(reader, start=2)]


def _cell(value: object) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def to_csv(rows: Iterable[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in sorted(rows, key=row_key):
        writer.writerow({c: _cell(row.get(c, "")) for c in COLUMNS})
    return buffer.getvalue()


@dataclass(frozen=True)
class Point:
    """AP of one (block, number of real images) cell, over the seeds that ran."""

    labelled: int
    by_seed: dict[int, float]
    ap50: float

    @property
    def mean(self) -> float:
        return statistics.fmean(self.by_seed.values())

    @property
    def std(self) -> float:
        values = list(self.by_seed.values())
        return statistics.stdev(values) if len(values) > 1 else 0.0


@dataclass(frozen=True)
class Block:
    """One strategy line of the figures / block of Table A1."""

    setting: str
    mode: str
    strategy: str
    k: int  # per-cycle k of a multi-cycle block; 0 for single-cycle blocks
    points: list[Point]

    @property
    def title(self) -> str:
        name = STRATEGY_TITLES.get(self.strategy, self.strategy)
        if self.mode == "multi":
            cycles = max((p.labelled for p in self.points), default=0) // max(1, self.k)
            return f"{self.setting} {name}: {cycles} cycles of k={self.k}"
        return f"{self.setting} {name}"


def _base_point(rows: list[dict]) -> Point | None:
    base = [r for r in rows if r["mode"] == BASE_MODE]
    if not base:
        return None
    return Point(0, {r["seed"]: r["AP"] for r in base}, statistics.fmean(r["AP50"] for r in base))


def _points(rows: list[dict]) -> list[Point]:
    by_labelled: dict[int, list[dict]] = {}
    for row in rows:
        by_labelled.setdefault(row["labelled"], []).append(row)
    return [
        Point(n, {r["seed"]: r["AP"] for r in group}, statistics.fmean(r["AP50"] for r in group))
        for n, group in sorted(by_labelled.items())
    ]


def blocks(rows: list[dict]) -> list[Block]:
    """Rows grouped as the paper's table: R blocks, then S+R single, then multi-cycle."""
    base = _base_point(rows)
    groups: dict[tuple[str, str, str, int], list[dict]] = {}
    for row in rows:
        if row["mode"] == BASE_MODE:
            continue
        k = row["k"] if row["mode"] == "multi" else 0
        groups.setdefault((row["setting"], row["mode"], row["strategy"], k), []).append(row)
    order = list(STRATEGY_TITLES)

    def rank(item: tuple[tuple[str, str, str, int], list[dict]]) -> tuple:
        (setting, mode, strategy, k), _ = item
        known = order.index(strategy) if strategy in order else len(order)
        return (mode != "single", setting != "R", known, strategy, k)

    out = []
    for (setting, mode, strategy, k), group in sorted(groups.items(), key=rank):
        points = _points(group)
        if setting == "S+R" and base is not None:
            points = [base, *points]
        out.append(Block(setting, mode, strategy, k, points))
    return out


def _fmt(value: float | None) -> str:
    return "" if value is None or math.isnan(value) else f"{value:.3f}"


def markdown_table(rows: list[dict]) -> str:
    """Table A1's layout: a block per strategy, a line per number of real training images,
    one AP column per seed (filled for blocks that ran several), then the mean (± std over
    seeds) and AP50."""
    seeds = sorted({r["seed"] for r in rows if r["mode"] != BASE_MODE})
    head = [
        "Strategy",
        "Real training images",
        *[f"AP seed {s}" for s in seeds],
        "AP (mean)",
        "± std",
        "AP50 (mean)",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for block in blocks(rows):
        repeated = block.strategy == "random" or any(len(p.by_seed) > 1 for p in block.points)
        for i, point in enumerate(block.points):
            per_seed = [
                _fmt(point.by_seed.get(s)) if repeated and point.labelled else "" for s in seeds
            ]
            spread = _fmt(point.std) if len(point.by_seed) > 1 else ""
            cells = [
                f"**{block.title}**" if i == 0 else "",
                str(point.labelled),
                *per_seed,
                _fmt(point.mean),
                spread,
                _fmt(point.ap50),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _group_name(row: dict) -> str:
    if row["mode"] == BASE_MODE:
        return "S base model M0 (synthetic only)"
    name = f"{row['setting']} {STRATEGY_TITLES.get(row['strategy'], row['strategy'])}"
    return f"{name}, cycles of k={row['k']}" if row["mode"] == "multi" else name


def timing_summary(rows: list[dict]) -> str:
    """One line per block: runs, mean and total wall time (the cost side of the table)."""
    lines = ["| Block | Runs | Wall s per run (mean) | Wall s (total) |", "|---|---|---|---|"]
    groups: dict[str, list[float]] = {}
    for row in rows:
        groups.setdefault(_group_name(row), []).append(row["wall_s"])

    def rank(name: str) -> tuple[bool, bool, bool, str]:
        return (not name.startswith("S base"), not name.startswith("R "), "cycles" in name, name)

    for name, walls in sorted(groups.items(), key=lambda item: rank(item[0])):
        lines.append(
            f"| {name} | {len(walls)} | {statistics.fmean(walls):.0f} | {sum(walls):.0f} |"
        )
    return "\n".join(lines) + "\n"

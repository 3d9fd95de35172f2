"""The paper's Table A1 and the wall-time table, made from results.csv rows.

Rows group into blocks (setting, mode, strategy): a line per number of labelled real images,
AP per seed, mean ± std over seeds. Every block starts with the line of the model its queries
start from: M0 for S+R (0 real images), M(L0) for R with --initial (N real images, per seed).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from dal.trainer.results import (
    BASE_MODE,
    START_MODE,
    START_MODES,
    STRATEGY_TITLES,
)


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
    start: int = 0  # labelled images of the model the block starts from (R: N of --initial)

    @property
    def title(self) -> str:
        name = STRATEGY_TITLES.get(self.strategy, self.strategy)
        if self.mode == "multi":
            top = max((p.labelled for p in self.points), default=0)
            cycles = (top - self.start) // max(1, self.k)
            return f"{self.setting} {name}: {cycles} cycles of k={self.k}"
        return f"{self.setting} {name}"

    @property
    def key(self) -> tuple[str, str, str, int]:
        return (self.setting, self.mode, self.strategy, self.k)


def _start_point(rows: list[dict], mode: str) -> Point | None:
    """The line of the start model(s) of this mode (base: M0; start: M(L0) per seed)."""
    start = [r for r in rows if r["mode"] == mode]
    if not start:
        return None
    return Point(
        start[0]["labelled"],
        {r["seed"]: r["AP"] for r in start},
        statistics.fmean(r["AP50"] for r in start),
    )


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
    starts = {"S+R": _start_point(rows, BASE_MODE), "R": _start_point(rows, START_MODE)}
    groups: dict[tuple[str, str, str, int], list[dict]] = {}
    for row in rows:
        if row["mode"] in START_MODES:
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
        start = starts.get(setting)
        if start is not None:
            points = [start, *points]
        out.append(Block(setting, mode, strategy, k, points, start.labelled if start else 0))
    return out


def _fmt(value: float | None) -> str:
    return "" if value is None or math.isnan(value) else f"{value:.3f}"


Cells = dict[tuple[tuple[str, str, str, int], int], str]


def markdown_table(rows: list[dict], extra: tuple[str, Cells] | None = None) -> str:
    """Table A1's layout: a block per strategy, a line per number of real training images,
    one AP column per seed (filled for blocks that ran several), then the mean (± std over
    seeds) and AP50; `extra` adds a column (title, cells by block key and labelled count)."""
    seeds = sorted({r["seed"] for r in rows if r["mode"] != BASE_MODE})
    head = [
        "Strategy",
        "Real training images",
        *[f"AP seed {s}" for s in seeds],
        "AP (mean)",
        "± std",
        "AP50 (mean)",
        *([extra[0]] if extra else []),
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
                *([extra[1].get((block.key, point.labelled), "")] if extra else []),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def start_models(rows: list[dict], config: dict) -> list[str]:
    """One sentence per setting on the model its queries start from (for tables and plots).

    `config` is experiment.json's "config"; a given --base is a given checkpoint, never
    called synthetic."""
    lines = []
    settings = {r["setting"] for r in rows}
    base = [r for r in rows if r["mode"] == BASE_MODE]
    if base:
        ap = statistics.fmean(r["AP"] for r in base)
        if config.get("base"):
            what = f"the given checkpoint {config['base']}"
        else:
            source = config.get("synthetic") or "the synthetic set"
            what = f"trained on synthetic images only ({source}, {config.get('base_epochs')} "
            what += "epochs, from the backbone)"
        lines.append(f"S+R start model M0: {what}; AP {ap:.3f}.")
    start = sorted((r for r in rows if r["mode"] == START_MODE), key=lambda r: r["seed"])
    if start:
        per_seed = ", ".join(f"seed {r['seed']}: AP {r['AP']:.3f}" for r in start)
        lines.append(
            f"R start model M(L0), one per seed: trained from the backbone on "
            f"{start[0]['labelled']} random real labels L0 drawn with that seed (the same L0 for "
            f"every strategy of the seed); {per_seed}."
        )
    elif "R" in settings:
        lines.append(
            "R start: the ImageNet backbone alone (no detection layers trained, random picks "
            "only; --initial N starts R from N random real labels)."
        )
    return lines


def _group_name(row: dict, base_given: bool) -> str:
    if row["mode"] == BASE_MODE:
        return f"S base model M0 ({'given checkpoint' if base_given else 'synthetic only'})"
    if row["mode"] == START_MODE:
        return f"R start models M(L0) ({row['labelled']} random real labels)"
    name = f"{row['setting']} {STRATEGY_TITLES.get(row['strategy'], row['strategy'])}"
    return f"{name}, cycles of k={row['k']}" if row["mode"] == "multi" else name


def timing_summary(rows: list[dict], base_given: bool = False) -> str:
    """One line per block: runs, mean and total wall time (the cost side of the table)."""
    lines = ["| Block | Runs | Wall s per run (mean) | Wall s (total) |", "|---|---|---|---|"]
    groups: dict[str, list[float]] = {}
    for row in rows:
        groups.setdefault(_group_name(row, base_given), []).append(row["wall_s"])

    def rank(name: str) -> tuple[bool, bool, bool, bool, str]:
        starts = name.startswith(("S base", "R start"))
        return (
            not starts,
            not name.startswith("S base"),
            not name.startswith("R "),
            "cycles" in name,
            name,
        )

    for name, walls in sorted(groups.items(), key=lambda item: rank(item[0])):
        lines.append(
            f"| {name} | {len(walls)} | {statistics.fmean(walls):.0f} | {sum(walls):.0f} |"
        )
    return "\n".join(lines) + "\n"

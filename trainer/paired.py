"""Paired differences to random per seed, with bootstrap intervals, from the runs on disk.

A strategy's run and random's run of the same seed share the start model and (with --initial)
L0, so their AP difference is the query's effect plus training noise. Each run's validation
detections (detections.json) give the AP of both on the same resamples of the validation
images (trainer/bootstrap.py); the mean over seeds gets its interval from the same resamples.

Cost: one resampled AP is one pycocotools accumulate; it is measured on the first model, and
when all models would take longer than `budget_s`, the resample count is lowered to fit (not
below 100), and the report says so. A model's resample APs are cached beside its detections
(detections.bootstrap.npz, keyed by the resamples and the detections' sha256), so
`--report-only` repeats only new work.
"""

from __future__ import annotations

import hashlib
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dal.coco import CocoDataset
from dal.errors import DatasetError
from dal.trainer.bootstrap import (
    RESAMPLE_SEED,
    RESAMPLES,
    ImageAP,
    Interval,
    percentile_interval,
    resample_positions,
    seconds_per_ap,
)
from dal.trainer.detections import read_detections
from dal.trainer.results import START_MODES

MIN_RESAMPLES = 100
BUDGET_S = 300.0
RANDOM = "random"

BlockKey = tuple[str, str, str, int]


@dataclass
class PairedCell:
    """One (block, labelled count): the per-seed differences and their mean."""

    block: BlockKey
    labelled: int
    by_seed: dict[int, Interval | float] = field(default_factory=dict)
    mean: Interval | float | None = None


@dataclass
class PairedReport:
    cells: list[PairedCell]
    resamples: int  # used (0: no intervals)
    requested: int
    images: int
    models: int
    computed: int  # models whose resample APs were computed now (the rest: from cache)
    seconds: float
    seconds_per_ap: float
    notes: list[str] = field(default_factory=list)


def _block_key(row: dict) -> BlockKey:
    return (row["setting"], row["mode"], row["strategy"], row["k"] if row["mode"] == "multi" else 0)


def pairs(rows: list[dict]) -> list[tuple[dict, dict]]:
    """(strategy row, random row of the same setting, seed and labelled count): same mode
    when random ran that mode, else random's single-cycle run."""
    randoms = {
        (r["setting"], r["mode"], r["seed"], r["labelled"]): r
        for r in rows
        if r["strategy"] == RANDOM and r["mode"] not in START_MODES
    }
    out = []
    for row in rows:
        if row["strategy"] == RANDOM or row["mode"] in START_MODES:
            continue
        key = (row["setting"], row["mode"], row["seed"], row["labelled"])
        partner = randoms.get(key) or randoms.get((row["setting"], "single", *key[2:]))
        if partner is not None:
            out.append((row, partner))
    return out


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class RunAPs:
    """Full-set AP and resample APs of each run, from its detections file (cached)."""

    def __init__(self, out: Path, val: CocoDataset | None) -> None:
        self.out = out
        self.val = val
        self.resamples = np.zeros((0, len(val.images) if val else 0), dtype=np.int64)
        self.val_ids = sorted(rec.id for rec in val.images) if val is not None else []
        self._models: dict[str, ImageAP] = {}
        self.computed = 0

    def path(self, row: dict) -> Path | None:
        name = str(row.get("detections") or "")
        if not name or self.val is None:
            return None
        path = self.out / name
        return path if path.is_file() else None

    def model(self, row: dict) -> ImageAP | None:
        path = self.path(row)
        if path is None or self.val is None:
            return None
        if str(path) not in self._models:
            image_ids, results = read_detections(path)
            if sorted(image_ids) != self.val_ids:
                raise DatasetError(
                    f"{path}: evaluated on other images than the validation file "
                    f"{self.val.json_path}",
                    hint="restore the experiment's --val file to report intervals",
                )
            self._models[str(path)] = ImageAP(self.val, results)
        return self._models[str(path)]

    def aps(self, row: dict) -> tuple[float, np.ndarray] | None:
        """(AP on all images, AP per resample) of the row's run; None without detections."""
        path = self.path(row)
        if path is None:
            return None
        key = f"{_sha256(path.read_bytes())}:{_sha256(self.resamples.tobytes())}"
        cache = path.with_suffix(".bootstrap.npz")
        if cache.is_file():
            with np.load(cache) as saved:
                if str(saved["key"]) == key:
                    return float(saved["full"]), saved["aps"]
        model = self.model(row)
        assert model is not None
        full, aps = model.ap(), model.aps(self.resamples)
        self.computed += 1
        np.savez_compressed(cache, key=key, full=full, aps=aps)
        return full, aps


def _resample_count(
    runs: RunAPs, rows: list[dict], requested: int, budget_s: float
) -> tuple[int, float]:
    """Resamples that fit the budget for all `rows`' models, and the measured seconds per AP.

    A reduced count is rounded down to a multiple of 100, so small changes in the measured
    cost do not change it (and invalidate the caches) from one report to the next."""
    sample = next((r for r in rows if runs.path(r) is not None), None)
    if sample is None or requested <= 0:
        return 0, 0.0
    model = runs.model(sample)
    assert model is not None
    cost = seconds_per_ap(model)
    fit = int(budget_s / max(cost * len(rows), 1e-9)) // 100 * 100
    return min(requested, max(fit, MIN_RESAMPLES)), cost


def _cells(matched: list[tuple[dict, dict]], runs: RunAPs, intervals: bool) -> list[PairedCell]:
    """Per (block, labelled): each seed's difference (with its interval when both runs have
    detections), and their mean (with an interval when every seed has one)."""
    cells: dict[tuple[BlockKey, int], PairedCell] = {}
    diffs: dict[tuple[BlockKey, int], list[np.ndarray]] = {}
    for row, partner in matched:
        key = (_block_key(row), row["labelled"])
        cell = cells.setdefault(key, PairedCell(*key))
        a, b = (runs.aps(row), runs.aps(partner)) if intervals else (None, None)
        if a is None or b is None:
            cell.by_seed[row["seed"]] = row["AP"] - partner["AP"]
            continue
        cell.by_seed[row["seed"]] = percentile_interval(a[0] - b[0], a[1] - b[1])
        diffs.setdefault(key, []).append(a[1] - b[1])
    for key, cell in cells.items():
        values = [v.value if isinstance(v, Interval) else v for v in cell.by_seed.values()]
        stacked = diffs.get(key, [])
        if stacked and len(stacked) == len(values):
            cell.mean = percentile_interval(statistics.fmean(values), np.mean(stacked, axis=0))
        else:
            cell.mean = statistics.fmean(values)
    return list(cells.values())


def paired_report(
    rows: list[dict],
    out: Path,
    val: CocoDataset | None,
    requested: int = RESAMPLES,
    budget_s: float = BUDGET_S,
    seed: int = RESAMPLE_SEED,
) -> PairedReport:
    """Paired differences of every strategy to random, per seed and on average."""
    started = time.perf_counter()
    matched = pairs(rows)
    involved = list({id(r): r for pair in matched for r in pair}.values())
    runs = RunAPs(out, val)
    notes = []
    if val is None:
        notes.append("validation file not found: differences without intervals")
    count, cost = _resample_count(runs, involved, requested, budget_s)
    if 0 < count < requested:
        notes.append(
            f"resamples reduced from {requested} to {count} to fit the {budget_s:.0f} s "
            f"budget ({cost * 1000:.1f} ms per AP, {len(involved)} models)"
        )
    images = len(val.images) if val is not None else 0
    if count:
        runs.resamples = resample_positions(images, count, seed)
    missing = sum(1 for r in involved if runs.path(r) is None)
    if missing and val is not None:
        notes.append(f"{missing} runs have no detections file: their differences have no interval")
    return PairedReport(
        _cells(matched, runs, count > 0),
        count,
        requested,
        images,
        len(involved),
        runs.computed,
        time.perf_counter() - started,
        cost,
        notes,
    )

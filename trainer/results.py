"""Experiment results: the CSV every run appends to.

One row per finished run. The key columns (setting, mode, strategy, k, seed, cycle) name a run;
a row that exists means the run is done, which is what makes `dal experiment` resumable. The
file is rewritten atomically after every run, so a crash leaves the previous complete file.

Rows of the synthetic base model M0 use setting "S", mode "base", k 0, cycle 0: the 0-image
line of every S+R block, as in the paper. Rows of R's start models M(L0) (--initial N) use
setting "R", mode "start", strategy "initial", k N, cycle 0, one per seed: the N-image line of
every R block. `picked` holds the image ids a run added (L0 itself for a start model);
`detections` the run's validation detections file, relative to the experiment folder.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable
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
    "detections",
    "finished",
)
_INT_COLUMNS = ("k", "seed", "cycle", "labelled", "steps")
_FLOAT_COLUMNS = ("AP", "AP50", "AP75", "wall_s", "select_s", "train_s", "eval_s")

BASE_SETTING, BASE_MODE, BASE_STRATEGY = "S", "base", "synthetic"
START_SETTING, START_MODE, START_STRATEGY = "R", "start", "initial"
START_MODES = (BASE_MODE, START_MODE)
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

"""How far a whole experiment plan is, and about how long the rest will take.

Runs come in kinds that cost very different times: the base model M0 (many epochs on the
synthetic set), the R start models M(L0) (trained from the backbone), and the fine-tuning runs.
The estimate multiplies what is left of each kind by that kind's measured mean wall time; a kind
not measured yet is guessed from the mean of all runs so far.
"""

from __future__ import annotations

import statistics
from collections import Counter

BASE, START, RUN = "base model", "start model", "run"


class PlanClock:
    """Counts planned and finished work by kind and estimates the time left."""

    def __init__(self) -> None:
        self.planned: Counter[str] = Counter()
        self.finished: Counter[str] = Counter()
        self._walls: dict[str, list[float]] = {}

    def plan(self, kind: str, total: int, already_done: int = 0) -> None:
        """`total` items of `kind` in the plan, `already_done` of them from earlier calls."""
        self.planned[kind] += total
        self.finished[kind] += already_done

    def finish(self, kind: str, wall_s: float) -> None:
        self.finished[kind] += 1
        self._walls.setdefault(kind, []).append(wall_s)

    @property
    def done(self) -> int:
        return sum(self.finished.values())

    @property
    def total(self) -> int:
        return sum(self.planned.values())

    def seconds_left(self) -> float | None:
        """Estimated wall time of what is left; None before anything was measured."""
        measured = [w for walls in self._walls.values() for w in walls]
        if not measured:
            return None
        overall = statistics.fmean(measured)
        left = 0.0
        for kind, total in self.planned.items():
            walls = self._walls.get(kind)
            mean = statistics.fmean(walls) if walls else overall
            left += max(0, total - self.finished[kind]) * mean
        return left

    def parts(self) -> tuple[str, str]:
        """'[done/total]' and '; about N min left' (empty before anything was measured)."""
        left = self.seconds_left()
        eta = "" if left is None else f"; about {left / 60:.0f} min left"
        return f"[{self.done}/{self.total}]", eta

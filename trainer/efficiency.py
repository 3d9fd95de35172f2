"""Label efficiency: how many random labels buy the AP a strategy reached.

For a strategy's mean AP at L labels, walk random's mean learning curve of the same setting
(piecewise linear between its measured points, starting at the shared start model) to the
first place it reaches that AP. "> max" when random never gets there within its curve, "≤ n"
when random's first point is already as good.

The paper's claim, "the best strategy at k labels is at least as good as random at 2k", is
tested in queried labels: k counts the labels a query added beyond the start model (S+R: all
real labels; R with --initial N: the labels beyond L0), so random at 2k means N + 2k labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

from dal.trainer.report import Block, Cells
from dal.trainer.results import STRATEGY_TITLES

RANDOM = "random"


@dataclass(frozen=True)
class Reach:
    """Random labels for an AP: a number, or a bound when it lies off the random curve."""

    labels: float
    bound: str = ""  # "" interpolated, "≤" at or below random's first point, ">" beyond its last

    def format(self) -> str:
        text = f"{round(self.labels, 1):g}"
        return f"{self.bound} {text}" if self.bound else text


def labels_to_reach(curve: list[tuple[int, float]], target: float) -> Reach | None:
    """Fewest labels at which the piecewise-linear `curve` [(labels, AP)] first reaches
    `target`; None for an empty curve."""
    points = sorted(curve)
    if not points:
        return None
    first_labels, first_ap = points[0]
    if target <= first_ap:
        return Reach(float(first_labels), "≤")
    for (x0, y0), (x1, y1) in pairwise(points):
        if y0 < target <= y1:
            return Reach(x0 + (target - y0) * (x1 - x0) / (y1 - y0))
    return Reach(float(points[-1][0]), ">")


def interpolate(curve: list[tuple[int, float]], labels: float) -> float | None:
    """The curve's AP at `labels`; None outside its measured range."""
    points = sorted(curve)
    if not points or labels < points[0][0] or labels > points[-1][0]:
        return None
    for (x0, y0), (x1, y1) in pairwise(points):
        if x0 <= labels <= x1:
            return y0 if x1 == x0 else y0 + (labels - x0) * (y1 - y0) / (x1 - x0)
    return points[-1][1]


def _curve(block: Block) -> list[tuple[int, float]]:
    return [(p.labelled, p.mean) for p in block.points]


def random_block(all_blocks: list[Block], block: Block) -> Block | None:
    """Random's block to compare `block` with: same setting, same mode if it ran, else the
    single-cycle one."""
    candidates = [b for b in all_blocks if b.setting == block.setting and b.strategy == RANDOM]
    same_mode = [b for b in candidates if b.mode == block.mode]
    single = [b for b in candidates if b.mode == "single"]
    return (same_mode or single or [None])[0]


def efficiency_cells(all_blocks: list[Block]) -> Cells:
    """'Random labels for this AP' for every point past the start of a non-random block."""
    cells: Cells = {}
    for block in all_blocks:
        baseline = random_block(all_blocks, block)
        if block.strategy == RANDOM or baseline is None:
            continue
        for point in block.points:
            if point.labelled == block.start:
                continue
            reach = labels_to_reach(_curve(baseline), point.mean)
            if reach is not None:
                cells[(block.key, point.labelled)] = reach.format()
    return cells


def efficiency_points(
    all_blocks: list[Block],
) -> list[tuple[Block, list[tuple[int, Reach]]]]:
    """(block, [(labels, random labels for its AP)]) for the figure."""
    out = []
    for block in all_blocks:
        baseline = random_block(all_blocks, block)
        if block.strategy == RANDOM or baseline is None:
            continue
        reaches = []
        for point in block.points:
            reach = labels_to_reach(_curve(baseline), point.mean)
            if point.labelled != block.start and reach is not None:
                reaches.append((point.labelled, reach))
        if reaches:
            out.append((block, reaches))
    return out


def claim_lines(all_blocks: list[Block]) -> list[str]:
    """Per setting and labelled count: the best strategy at k queried labels vs random at 2k."""
    lines = []
    singles = [b for b in all_blocks if b.mode == "single"]
    for setting in sorted({b.setting for b in singles}):
        baseline = next((b for b in singles if b.setting == setting and b.strategy == RANDOM), None)
        others = [b for b in singles if b.setting == setting and b.strategy != RANDOM]
        if baseline is None or not others:
            continue
        start = baseline.start
        counts = sorted({p.labelled for b in others for p in b.points if p.labelled > start})
        for labelled in counts:
            means = [(p.mean, b) for b in others for p in b.points if p.labelled == labelled]
            best_ap, best = max(means, key=lambda item: item[0])
            k = labelled - start
            target = start + 2 * k
            random_ap = interpolate(_curve(baseline), target)
            name = STRATEGY_TITLES.get(best.strategy, best.strategy)
            head = f"- {setting}, k = {k} queried labels ({labelled} in all): best {name} "
            head += f"AP {best_ap:.3f}"
            if random_ap is None:
                top = max(p.labelled for p in baseline.points)
                lines.append(
                    f"{head}; random at 2k = {target} labels not measured (its curve ends at "
                    f"{top}): not testable"
                )
                continue
            verdict = "holds" if best_ap >= random_ap else "fails"
            lines.append(f"{head} vs random at 2k = {target} labels AP {random_ap:.3f}: {verdict}")
    return lines

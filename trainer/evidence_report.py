"""The part of table.md that asks whether active learning saved labels.

Two sections under Table A1: the paired difference of every strategy to random of the same
seed with its bootstrap interval over validation images (trainer/paired.py), and the paper's
claim "best strategy at k labels ≥ random at 2k" checked on the mean curves
(trainer/efficiency.py). Both say how they were computed, so the numbers can be read alone.
"""

from __future__ import annotations

from pathlib import Path

from dal.coco import CocoDataset
from dal.trainer.bootstrap import LEVEL, Interval
from dal.trainer.efficiency import claim_lines
from dal.trainer.paired import PairedCell, PairedReport, paired_report
from dal.trainer.report import Block, blocks
from dal.trainer.results import STRATEGY_TITLES


def _title(key: tuple[str, str, str, int], all_blocks: list[Block]) -> str:
    for block in all_blocks:
        if block.key == key:
            return block.title
    setting, _, strategy, _ = key
    return f"{setting} {STRATEGY_TITLES.get(strategy, strategy)}"


def _cell(value: Interval | float | None) -> str:
    if value is None:
        return ""
    if isinstance(value, Interval):
        return value.format() + (" *" if value.excludes_zero else "")
    return f"{value:+.3f}"


def _method(report: PairedReport) -> str:
    if not report.resamples:
        return (
            "Differences on the whole validation split only (no bootstrap: "
            + ("; ".join(report.notes) or "--bootstrap 0")
            + ")."
        )
    text = (
        f"Δ AP = AP(strategy) - AP(random), same seed (same start model, same L0). Interval: "
        f"{LEVEL:.0%} percentile bootstrap over the {report.images} validation images, "
        f"{report.resamples} resamples drawn with replacement (an image drawn twice counts "
        "twice), both models' AP recomputed on each resample; the mean's interval comes from "
        "the mean over seeds on the same resamples, so it covers the validation draw, not the "
        "seeds. A multi-cycle chain is paired with random's chain when random ran one, else "
        "with random's single cycle at the same labels. * marks intervals that exclude 0. "
        f"Cost: {report.seconds:.1f} s, {report.computed} of {report.models} models computed "
        f"now, the rest read from their cache ({report.seconds_per_ap * 1000:.1f} ms per "
        "resampled AP)."
    )
    return text + "".join(f" Note: {n}." for n in report.notes)


def paired_table(report: PairedReport, all_blocks: list[Block]) -> str:
    seeds = sorted({s for c in report.cells for s in c.by_seed})
    head = [
        "Strategy",
        "Real training images",
        *[f"Δ AP seed {s}" for s in seeds],
        "Δ AP mean over seeds",
        "seeds Δ > 0",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    order = [b.key for b in all_blocks]

    def rank(cell: PairedCell) -> tuple[int, int]:
        known = order.index(cell.block) if cell.block in order else len(order)
        return known, cell.labelled

    last = None
    for cell in sorted(report.cells, key=rank):
        title = _title(cell.block, all_blocks)
        lines.append("| " + " | ".join(_row(cell, title if title != last else "", seeds)) + " |")
        last = title
    return "\n".join(lines) + "\n"


def _row(cell: PairedCell, title: str, seeds: list[int]) -> list[str]:
    values = [v.value if isinstance(v, Interval) else v for v in cell.by_seed.values()]
    return [
        f"**{title}**" if title else "",
        str(cell.labelled),
        *[_cell(cell.by_seed.get(s)) for s in seeds],
        _cell(cell.mean),
        f"{sum(v > 0 for v in values)}/{len(values)}",
    ]


def evidence_sections(
    rows: list[dict],
    out: Path,
    val: CocoDataset | None,
    resamples: int,
    budget_s: float,
) -> tuple[str, PairedReport]:
    """Markdown of both sections, and the paired report (for the caller's log)."""
    all_blocks = blocks(rows)
    report = paired_report(rows, out, val, resamples, budget_s)
    text = "\n## Paired difference to random\n\n"
    if report.cells:
        text += _method(report) + "\n\n" + paired_table(report, all_blocks)
    else:
        text += "No strategy ran beside random with the same seed and labels.\n"
    claims = claim_lines(all_blocks)
    text += (
        "\n## Does the best strategy at k labels match random at 2k?\n\n"
        "k = labels queried beyond the start model; mean AP over seeds; random's AP at 2k "
        "interpolated linearly on its mean curve (not extrapolated). The column 'Random labels "
        "for this AP' in the table above reads the same curve the other way.\n\n"
    )
    text += "\n".join(claims) + "\n" if claims else "No single-cycle strategy beside random.\n"
    return text, report

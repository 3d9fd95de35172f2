"""Figures like the paper's: AP against labelled real images, mean ± std over seeds.

- Figure 6: one cycle, AP vs the query batch size k, a line per setting and strategy (S+R lines
  start at k = 0 with the synthetic base model).
- Figure 8: one cycle with k images vs several cycles of a fixed k, against the total number of
  labelled images.
matplotlib with the Agg backend: no display needed.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from dal.fileio import atomic_write_bytes
from dal.trainer.report import Block, blocks

_STYLES = {
    ("R", "random"): ("tab:gray", "s"),
    ("S+R", "random"): ("tab:blue", "o"),
    ("S+R", "margin"): ("tab:orange", "^"),
    ("S+R", "dbal"): ("tab:green", "D"),
    ("S+R", "coreset"): ("tab:purple", "v"),
}


def _draw(ax: plt.Axes, block: Block, dashed: bool = False) -> None:
    color, marker = _STYLES.get((block.setting, block.strategy), (None, "o"))
    x = [p.labelled for p in block.points]
    mean = [p.mean for p in block.points]
    line = ax.plot(
        x, mean, marker=marker, color=color, linestyle="--" if dashed else "-", label=block.title
    )[0]
    if any(len(p.by_seed) > 1 for p in block.points):
        # AP lives in [0, 1]: a band past it would only show that the std is a poor summary
        low = [max(0.0, p.mean - p.std) for p in block.points]
        high = [min(1.0, p.mean + p.std) for p in block.points]
        ax.fill_between(x, low, high, color=line.get_color(), alpha=0.15, linewidth=0)


def _save(fig: plt.Figure, path: Path) -> Path:
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue())


def _axes(title: str, xlabel: str) -> tuple[plt.Figure, plt.Axes]:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("AP@[0.5:0.95] (validation)")
    ax.grid(alpha=0.3)
    return fig, ax


def figure6(rows: list[dict], path: Path, subtitle: str = "") -> Path | None:
    """AP vs k for one cycle; None when there are no single-cycle rows."""
    single = [b for b in blocks(rows) if b.mode == "single"]
    if not single:
        return None
    fig, ax = _axes(
        "One cycle: AP vs query batch size k" + (f"\n{subtitle}" if subtitle else ""),
        "batch size of queried real training images k",
    )
    for block in single:
        _draw(ax, block)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def figure8(rows: list[dict], path: Path, subtitle: str = "") -> Path | None:
    """Several cycles vs one cycle, AP vs labelled images; None without multi-cycle rows."""
    all_blocks = blocks(rows)
    multi = [b for b in all_blocks if b.mode == "multi"]
    if not multi:
        return None
    compare = {b.strategy for b in multi} | {"random"}
    single = [
        b for b in all_blocks if b.mode == "single" and b.setting == "S+R" and b.strategy in compare
    ]
    fig, ax = _axes(
        "Several cycles vs one cycle" + (f"\n{subtitle}" if subtitle else ""),
        "number of labelled real training images",
    )
    for block in single:
        _draw(ax, block)
    for block in multi:
        _draw(ax, block, dashed=True)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)

"""Figures like the paper's: AP against labelled real images, mean ± std over seeds.

- Figure 6: one cycle, the learning curve of each setting and strategy: AP vs labelled real
  images (S+R lines start at 0 with M0, R lines with --initial at N with M(L0)).
- Figure 8: one cycle with k images vs several cycles of a fixed k, against the total number of
  labelled images.
- Label efficiency: for each strategy's mean AP, the random labels that reach it, against the
  strategy's labels, with the lines "as many" and "twice the queried labels" (the paper's
  claim).
The y axes start at 0 and each figure states what its start models were. matplotlib with the
Agg backend: no display needed.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from dal.fileio import atomic_write_bytes
from dal.trainer.efficiency import efficiency_points
from dal.trainer.report import Block, blocks

# A colour and marker per strategy; R lines have hollow markers and dash-dots, so a strategy
# keeps its colour in both settings and the settings still tell apart.
_STYLES = {
    "random": ("tab:gray", "s"),
    "margin": ("tab:orange", "^"),
    "dbal": ("tab:green", "D"),
    "coreset": ("tab:purple", "v"),
}


def _style(block: Block, dashed: bool = False) -> dict:
    color, marker = _STYLES.get(block.strategy, (None, "o"))
    style = {"marker": marker, "color": color, "label": block.title}
    style["linestyle"] = "--" if dashed else "-." if block.setting == "R" else "-"
    if block.setting == "R":
        style["markerfacecolor"] = "white"
    return style


def _draw(ax: plt.Axes, block: Block, dashed: bool = False) -> None:
    x = [p.labelled for p in block.points]
    mean = [p.mean for p in block.points]
    line = ax.plot(x, mean, **_style(block, dashed))[0]
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


def _axes(
    title: str, xlabel: str, notes: list[str], ylabel: str = "AP@[0.5:0.95] (validation)"
) -> tuple[plt.Figure, plt.Axes]:
    """Axes with the start models described underneath (wrapped, small)."""
    text = "\n".join(textwrap.fill(n, 110) for n in notes)
    lines = text.count("\n") + 1 if text else 0
    fig, ax = plt.subplots(figsize=(7.5, 4.4 + 0.16 * lines))
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if text:
        fig.text(0.01, 0.01, text, fontsize=6.5, va="bottom", ha="left")
        fig.subplots_adjust(bottom=0.12 + 0.035 * lines)
    return fig, ax


def _finish(fig: plt.Figure, ax: plt.Axes, path: Path, has_notes: bool) -> Path:
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    if not has_notes:
        fig.tight_layout()
    return _save(fig, path)


def figure6(rows: list[dict], path: Path, subtitle: str = "", notes: list[str] = ()) -> Path | None:
    """Learning curves of one cycle; None when there are no single-cycle rows."""
    single = [b for b in blocks(rows) if b.mode == "single"]
    if not single:
        return None
    fig, ax = _axes(
        "One cycle: AP vs labelled real images" + (f"\n{subtitle}" if subtitle else ""),
        "labelled real training images (start model's + k queried)",
        list(notes),
    )
    for block in single:
        _draw(ax, block)
    return _finish(fig, ax, path, bool(notes))


def figure8(rows: list[dict], path: Path, subtitle: str = "", notes: list[str] = ()) -> Path | None:
    """Several cycles vs one cycle, AP vs labelled images; None without multi-cycle rows."""
    all_blocks = blocks(rows)
    multi = [b for b in all_blocks if b.mode == "multi"]
    if not multi:
        return None
    compare = {(b.setting, b.strategy) for b in multi} | {(b.setting, "random") for b in multi}
    single = [b for b in all_blocks if b.mode == "single" and (b.setting, b.strategy) in compare]
    fig, ax = _axes(
        "Several cycles vs one cycle" + (f"\n{subtitle}" if subtitle else ""),
        "number of labelled real training images",
        list(notes),
    )
    for block in single:
        _draw(ax, block)
    for block in multi:
        _draw(ax, block, dashed=True)
    return _finish(fig, ax, path, bool(notes))


def figure_efficiency(
    rows: list[dict], path: Path, subtitle: str = "", notes: list[str] = ()
) -> Path | None:
    """Random labels for each strategy's mean AP vs the strategy's labels; None when no
    strategy has a random curve to compare with. Off random's curve, hollow triangles: up at
    its end (random needs more than it was given), down at its start (random's first point
    is already as good)."""
    points = efficiency_points(blocks(rows))
    if not points:
        return None
    fig, ax = _axes(
        "Label efficiency: random labels for the same AP" + (f"\n{subtitle}" if subtitle else ""),
        "labelled real images of the strategy",
        list(notes),
        ylabel="random labels reaching its mean AP",
    )
    top = 0.0
    for block, reaches in points:
        x = [n for n, _ in reaches]
        y = [r.labels for _, r in reaches]
        line = ax.plot(x, y, **_style(block))[0]
        for bound, marker in ((">", "^"), ("≤", "v")):
            off = [(n, r.labels) for n, r in reaches if r.bound == bound]
            if off:
                ax.scatter(
                    *zip(*off, strict=True),
                    marker=marker,
                    s=110,
                    facecolors="none",
                    edgecolors=line.get_color(),
                    zorder=3,
                )
        top = max(top, *x, *y)
    end = top * 1.05
    guide = {"color": "black", "linewidth": 0.8}
    ax.plot([0, end], [0, end], linestyle=":", label="as many as random", **guide)
    for start in sorted({b.start for b, _ in points}):
        label = "random needs twice the queried labels" + (f" (beyond {start})" if start else "")
        xs = [float(start), end]
        ax.plot(xs, [start + 2 * (v - start) for v in xs], linestyle="--", label=label, **guide)
    ax.set_xlim(left=0)
    ax.set_ylim(top=top * 1.1 if top else None)
    return _finish(fig, ax, path, bool(notes))

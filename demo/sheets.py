"""What a demo run leaves behind for a person: contact sheets of each cycle's picks with their
labels, the AP-against-labels plot and results.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dal.coco import load_coco, read_image

if TYPE_CHECKING:
    from dal.trainer.service import TrainerService


def sheet(tiles: list[np.ndarray], path: Path, captions: list[str] | None = None) -> None:
    """A contact sheet of the tiles at `path`; nothing when there are none."""
    from dal.drawing import contact_sheet

    if tiles:
        contact_sheet(tiles, columns=5, tile_width=240, captions=captions).save(path)


def coco_tiles(pool_json: Path, picked: list[int]) -> list[np.ndarray]:
    """The picked pool images with their ground-truth boxes (offline: the oracle is the file)."""
    from dal.drawing import draw_detections

    coco = load_coco(pool_json)
    tiles = []
    for image_id in picked:
        rec = coco.by_id(image_id)
        image = read_image(coco.image_path(rec))
        tiles.append(
            draw_detections(image, rec.boxes, coco.labels(rec), class_names=coco.class_names)
        )
    return tiles


def picks_tiles(
    trainer: TrainerService, sample_ids: list[str]
) -> tuple[list[np.ndarray], list[str]]:
    """The picked samples as the trainer stored them, with the oracle's boxes, captioned with
    their pick rank and the agent's uncertainty score."""
    from dal.drawing import draw_detections

    tiles, captions = [], []
    for rank, sample_id in enumerate(sample_ids, start=1):
        sample, label = trainer.store.get(sample_id), trainer.store.label(sample_id)
        if sample is None:
            continue
        boxes = np.zeros((0, 4), np.float32) if label is None else label.boxes
        names = list(label.classes) if label is not None else []
        classes = sorted(set(names))
        ids = [classes.index(n) + 1 for n in names]  # labels are 1..C
        tiles.append(draw_detections(read_image(sample.path), boxes, ids, class_names=classes))
        captions.append(f"pick #{rank}  score {sample.score:.2f}")
    return tiles, captions


def plot(history: list[dict], path: Path, title: str, baseline: list[dict] | None = None) -> None:
    """Deployed AP against labels; the random baseline beside it when there is one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    curves = [(history, "o-", "deployed model (agent's query)")]
    if baseline:
        curves.append((baseline, "s--", "random picks, same M0, pool and budget"))
    for rows, style, label in curves:
        ax.plot([r["labelled"] for r in rows], [r["AP"] for r in rows], style, label=label)
    ax.set_xlabel("labelled workbench images")
    ax.set_ylabel("AP@[0.5:0.95] on workbench validation")
    ax.set_ylim(bottom=0)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_results(out: Path, doc: dict[str, Any], title: str) -> None:
    """results.json and ap_vs_labels.png in `out`."""
    (out / "results.json").write_text(json.dumps(doc, indent=2, default=str))
    plot(doc["cycles"], out / "ap_vs_labels.png", title, doc.get("random"))

"""The paper's loop offline, in one command, on data this project makes itself.

1. a synthetic training set (procedural parts, "synthetic" look) trains the base model M0;
2. a "workbench" set of the same parts with another look stands in for real camera frames (it
   is generated, not real: the point is the domain gap and the loop, not the numbers);
3. each cycle scores the unlabelled workbench pool with the exported ONNX model (max-margin +
   P2 feature), picks k images with the query strategy (DBAL by default), labels them with the
   ground-truth oracle, fine-tunes on all labelled images and evaluates AP on a held-out set.
Writes AP per cycle (JSON + a plot like the paper's Fig. 8) and a sheet of each cycle's picks.
The networked version (agent + trainer over MQTT) builds on the same pieces.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dal.coco import load_coco, read_image, write_coco
from dal.procedural import make_dataset
from dal.scoring import image_score
from dal.strategies import STRATEGIES, Candidates, select

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoPlan:
    size: tuple[int, int]
    synthetic: int
    pool: int
    val: int
    base_epochs: int
    cycle_epochs: int


PLANS = {
    "fast": DemoPlan(size=(320, 192), synthetic=32, pool=40, val=12, base_epochs=4, cycle_epochs=3),
    "full": DemoPlan(size=(640, 360), synthetic=96, pool=80, val=24, base_epochs=6, cycle_epochs=4),
}


def _say(text: str) -> None:
    print(f"[demo] {text}", flush=True)


def _make_data(out: Path, plan: DemoPlan, classes: int, seed: int) -> tuple[Path, Path, Path]:
    w, h = plan.size
    synthetic = make_dataset(
        out / "synthetic",
        plan.synthetic,
        classes=classes,
        width=w,
        height=h,
        seed=seed,
        style="synthetic",
    )
    pool = make_dataset(
        out / "workbench-pool",
        plan.pool,
        classes=classes,
        width=w,
        height=h,
        seed=seed + 1,
        style="workbench",
    )
    val = make_dataset(
        out / "workbench-val",
        plan.val,
        classes=classes,
        width=w,
        height=h,
        seed=seed + 2,
        style="workbench",
    )
    return synthetic, pool, val


def _train(
    train_json: Path,
    val_json: Path,
    out: Path,
    plan: DemoPlan,
    epochs: int,
    init: Path | None,
    seed: int,
):
    from dal.trainer.train import TrainSettings, train

    w, h = plan.size
    return train(
        TrainSettings(
            train=train_json,
            val=val_json,
            out=out,
            init=init,
            input_size=f"{w}x{h}",
            epochs=epochs,
            patience=epochs,
            seed=seed,
            warmup_steps=10,
        )
    )


def _score_pool(onnx_path: Path, pool_json: Path, unlabelled: list[int]) -> Candidates:
    from dal.agent.detector import Detector

    detector = Detector(onnx_path)
    coco = load_coco(pool_json)
    ids, scores, features = [], [], []
    for image_id in unlabelled:
        det = detector.detect(read_image(coco.image_path(coco.by_id(image_id))))
        ids.append(str(image_id))
        scores.append(image_score(det.probs, "margin", "sum"))
        features.append(det.feature)
    detector.close()
    return Candidates(ids=ids, scores=np.asarray(scores, np.float32), features=np.stack(features))


def _sheet(pool_json: Path, picked: list[int], path: Path) -> None:
    from dal.drawing import contact_sheet, draw_detections

    coco = load_coco(pool_json)
    tiles = []
    for image_id in picked:
        rec = coco.by_id(image_id)
        tiles.append(
            draw_detections(
                read_image(coco.image_path(rec)),
                rec.boxes,
                coco.labels(rec),
                class_names=coco.class_names,
            )
        )
    contact_sheet(tiles, columns=5, tile_width=240).save(path)


def _plot(history: list[dict], path: Path, strategy: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["labelled"] for r in history], [r["AP"] for r in history], "o-", label=strategy)
    ax.set_xlabel("labelled workbench images")
    ax.set_ylabel("AP@[0.5:0.95] on workbench validation")
    ax.set_title("dal demo: synthetic base model + active-learning cycles")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_demo(out: Path, plan: DemoPlan, cycles: int, k: int, strategy: str, seed: int) -> list:
    from dal.exporter.export import export_onnx

    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    _say(f"making data in {out} (generated stand-ins: 'workbench' is NOT real camera data)")
    synthetic, pool_json, val_json = _make_data(out, plan, classes=2, seed=seed)
    _say(f"training base model M0 on {plan.synthetic} synthetic images")
    result = _train(synthetic, val_json, out / "m0", plan, plan.base_epochs, None, seed)
    model_path = export_onnx(result.best_path, out / "m0.onnx")
    history = [{"cycle": 0, "labelled": 0, "AP": result.best_ap or 0.0, "model": str(model_path)}]
    _say(f"M0: AP {history[0]['AP']:.3f} on the workbench validation set")
    pool = load_coco(pool_json)
    labelled: list[int] = []
    checkpoint = result.best_path
    for cycle in range(1, cycles + 1):
        unlabelled = [rec.id for rec in pool.images if rec.id not in labelled]
        candidates = _score_pool(model_path, pool_json, unlabelled)
        picked = [int(i) for i in select(strategy, candidates, k, seed=seed + cycle)]
        labelled += picked
        _sheet(pool_json, picked, out / f"cycle{cycle}-picks.jpg")
        labels_json = write_coco(pool.subset(labelled).to_json(), out / f"labels-c{cycle}.json")
        _say(
            f"cycle {cycle}: {strategy} picked {len(picked)} images, oracle labelled them; "
            f"fine-tuning on {len(labelled)} labelled images"
        )
        result = _train(
            labels_json_with_root(labels_json, pool_json),
            val_json,
            out / f"m{cycle}",
            plan,
            plan.cycle_epochs,
            checkpoint,
            seed,
        )
        checkpoint = result.best_path
        model_path = export_onnx(checkpoint, out / f"m{cycle}.onnx")
        history.append(
            {
                "cycle": cycle,
                "labelled": len(labelled),
                "AP": result.best_ap or 0.0,
                "model": str(model_path),
            }
        )
        _say(f"cycle {cycle}: AP {history[-1]['AP']:.3f} with {len(labelled)} labels")
    (out / "results.json").write_text(json.dumps(history, indent=2))
    _plot(history, out / "ap_vs_labels.png", strategy)
    _say(
        f"done in {time.perf_counter() - started:.0f} s: {out / 'ap_vs_labels.png'}, "
        f"{out / 'results.json'}, picks in {out}/cycle*-picks.jpg"
    )
    return history


def labels_json_with_root(labels_json: Path, pool_json: Path) -> Path:
    """The oracle's label file lives beside the pool's: rewrite file names to point at it."""
    doc = json.loads(labels_json.read_text())
    rel = os.path.relpath(pool_json.parent, labels_json.parent)
    for image in doc["images"]:
        image["file_name"] = os.path.join(rel, image["file_name"])
    return write_coco(doc, labels_json)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("demo-output"))
    parser.add_argument("--fast", action="store_true", help="small images, few epochs (~3 min)")
    parser.add_argument("--cycles", type=int, default=2)
    parser.add_argument("--k", type=int, default=5, help="images labelled per cycle")
    parser.add_argument("--strategy", choices=sorted(STRATEGIES), default="dbal")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(os.cpu_count() or 1)
    run_demo(
        args.out,
        PLANS["fast" if args.fast else "full"],
        args.cycles,
        args.k,
        args.strategy,
        args.seed,
    )
    return 0

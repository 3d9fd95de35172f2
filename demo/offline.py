"""`dal demo --offline`: the active-learning loop with direct calls on procedural images; no
network, broker, agent or Blender. The agent's scoring and query run in this process."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from dal.coco import load_coco, read_image, write_coco
from dal.demo import STAND_IN_NOTE, say
from dal.demo.plan import DemoPlan
from dal.demo.sheets import coco_tiles, sheet, write_results
from dal.demo.training import train_model
from dal.strategies import Candidates, select


def _score_pool(onnx_path: Path, pool_json: Path, unlabelled: list[int]) -> Candidates:
    """What the agent would pool: each unlabelled image's margin score and P2 feature."""
    from dal.agent.detector import Detector
    from dal.scoring import image_score

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


def run_offline(out: Path, plan: DemoPlan, cycles: int, k: int, strategy: str, seed: int) -> dict:
    """M0 on synthetic images, then `cycles` rounds of pick k, label from the file, fine-tune."""
    from dal.procedural import make_dataset
    from dal.trainer.export import export_onnx

    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    say(f"offline mode: making procedural data in {out} ({STAND_IN_NOTE})")
    w, h = plan.size
    made = [
        make_dataset(out / name, n, classes=2, width=w, height=h, seed=seed + i, style=style)
        for i, (name, n, style) in enumerate(
            (
                ("synthetic", plan.synthetic, "synthetic"),
                ("workbench-pool", plan.pool, "workbench"),
                ("workbench-val", plan.val, "workbench"),
            )
        )
    ]
    synthetic, pool_json, val_json = made
    say(f"training base model M0 on {plan.synthetic} synthetic images")
    result = train_model(synthetic, val_json, out / "m0", plan, plan.base_epochs, None, seed)
    model_path = export_onnx(result.best_path, out / "m0.onnx")
    history = [{"cycle": 0, "labelled": 0, "AP": result.best_ap or 0.0, "model": str(model_path)}]
    say(f"M0: AP {history[0]['AP']:.3f} on the workbench validation set")
    pool = load_coco(pool_json)
    labelled: list[int] = []
    checkpoint = result.best_path
    for cycle in range(1, cycles + 1):
        unlabelled = [rec.id for rec in pool.images if rec.id not in labelled]
        candidates = _score_pool(model_path, pool_json, unlabelled)
        picked = [int(i) for i in select(strategy, candidates, k, seed=seed + cycle)]
        labelled += picked
        sheet(coco_tiles(pool_json, picked), out / f"cycle{cycle}-picks.jpg")
        labels_json = write_coco(pool.subset(labelled).to_json(), out / f"labels-c{cycle}.json")
        say(
            f"cycle {cycle}: {strategy} picked {len(picked)} images, oracle labelled them; "
            f"fine-tuning on {len(labelled)} labelled images"
        )
        result = train_model(
            labels_json,
            val_json,
            out / f"m{cycle}",
            plan,
            plan.cycle_epochs,
            checkpoint,
            seed,
            train_images=pool_json.parent,  # the labels keep the pool's file names
        )
        checkpoint = result.best_path
        model_path = export_onnx(checkpoint, out / f"m{cycle}.onnx")
        ap = result.best_ap or 0.0
        history.append(
            {"cycle": cycle, "labelled": len(labelled), "AP": ap, "model": str(model_path)}
        )
        say(f"cycle {cycle}: AP {ap:.3f} with {len(labelled)} labels")
    doc = {"mode": "offline", "strategy": strategy, "note": STAND_IN_NOTE, "cycles": history}
    write_results(out, doc, "dal demo --offline: synthetic M0 + active-learning cycles")
    say(f"done in {time.perf_counter() - started:.0f} s: results in {out}")
    return doc

"""The random baseline: what the agent's query has to beat, from the same M0, pool and budget."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dal.coco import load_coco, write_coco
from dal.demo import say
from dal.demo.data import DemoFiles

if TYPE_CHECKING:
    from dal.trainer.config import TrainerConfig


def random_baseline(
    trainer_config: TrainerConfig,
    m0: Path,
    m0_ap: float,
    files: DemoFiles,
    args: argparse.Namespace,
    out: Path,
) -> list[dict[str, Any]]:
    """Random picks from the same pool and M0, fine-tuned and gated exactly like the trainer's
    jobs: the curve the agent's query has to beat."""
    from dal.trainer.jobs import evaluate_checkpoint, finetune_settings, gate
    from dal.trainer.train import train

    pool, val = load_coco(files.pool_json), load_coco(files.val_json)
    rng = np.random.default_rng(args.seed)
    order = [int(i) for i in rng.permutation([rec.id for rec in pool.images])]
    ft = trainer_config.finetune
    deployed, deployed_ap = m0, m0_ap
    rows = [{"cycle": 0, "labelled": 0, "AP": m0_ap}]
    for cycle in range(1, args.cycles + 1):
        labelled = order[: cycle * args.k]
        run_dir = out / "random-baseline" / f"c{cycle}"
        labels = write_coco(pool.subset(labelled).to_json(), run_dir / "labels.json")
        # the labels keep the pool's file names: the pool's folder is their image root
        settings = finetune_settings(
            trainer_config, labels, files.pool_json.parent, deployed, run_dir / "run"
        )
        candidate = train(settings).best_path
        candidate_ap = evaluate_checkpoint(candidate, val, ft.device)["AP"]
        ok, why = gate(candidate_ap, deployed_ap, ft.tolerance, ft.relative_tolerance)
        if ok:
            deployed, deployed_ap = candidate, candidate_ap
        say(f"random baseline, cycle {cycle}: {why}")
        rows.append(
            {
                "cycle": cycle,
                "labelled": len(labelled),
                "AP": deployed_ap,
                "candidate_AP": candidate_ap,
            }
        )
    return rows

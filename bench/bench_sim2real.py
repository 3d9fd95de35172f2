"""Synthetic-only AP on real frames: train on renders alone, evaluate once on real photos.

The model never learns from a real frame and no epoch is picked by them: the AP of the final
model on the real set is the figure of the sim-to-real table in docs/rendering.md. The real
frames are the run's validation set with early stop off, which changes no weight: the curve
every `--eval-every` epochs shows whether longer training helps, and the figure is the AP after
the last epoch, not the best one seen.

    python bench/bench_sim2real.py --renders renders/annotations.json \\
        --real ycb-val/annotations.json --epochs 12 --eval-every 3 --out runs/s2r-photo

The real set is any COCO file with the renders' class names, e.g. YCB-Video frames imported with
`dal import-ycb ../shared/data/ycbv-sample/scenes --scenes 0001,0002 --classes
006_mustard_bottle` (this script then depends on ../shared). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from dal.coco import load_coco
from dal.errors import DalError
from dal.trainer.device import set_cpu_threads
from dal.trainer.train import TrainSettings, train


def train_on_renders(args: argparse.Namespace) -> list[dict]:
    """One training run on the renders; the real frames are only looked at, never learnt from.

    They are the run's validation set with early stop off, so they do not change a single
    weight: they measure AP every `--eval-every` epochs and after the last one (the figure)."""
    settings = TrainSettings(
        train=args.renders,
        val=args.real,
        out=args.out,
        backbone_weights="imagenet",
        input_size=args.input_size,
        epochs=args.epochs,
        batch_size=args.batch_size,
        patience=10**6,
        eval_every=args.eval_every,
        seed=args.seed,
        rpn_on_p2=args.rpn_on_p2,
        trainable_layers=args.trainable_layers,
        progress=not args.no_progress,
    )
    history = train(settings).history
    return [
        {key: row[key] for key in ("epoch", "AP", "AP50", "AP75")} for row in history if "AP" in row
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--renders", type=Path, required=True, help="synthetic COCO JSON")
    parser.add_argument("--real", type=Path, required=True, help="real COCO JSON (evaluation)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--eval-every", type=int, default=2, help="AP on the real frames every N")
    parser.add_argument("--input-size", default="320x240")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--trainable-layers", type=int, default=3)
    parser.add_argument("--rpn-on-p2", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--label", default="", help="the change this run measures (table row)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    set_cpu_threads(args.threads)
    started = time.perf_counter()
    try:
        curve = train_on_renders(args)
    except DalError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    renders = load_coco(args.renders)
    print(
        json.dumps(
            {
                "label": args.label,
                "renders": str(args.renders),
                "render_images": len(renders.images),
                "real": str(args.real),
                "input_size": args.input_size,
                "rpn_on_p2": args.rpn_on_p2,
                "trainable_layers": args.trainable_layers,
                "seed": args.seed,
                "final": curve[-1],
                "curve": curve,
                "minutes": round((time.perf_counter() - started) / 60, 1),
            },
            indent=1,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

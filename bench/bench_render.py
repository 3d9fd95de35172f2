"""Rendering speed of `dal render` at given settings: images per minute, as one JSON object.

By default it renders the generated turbine-blade part (blender/parts.py) with the paper's
knobs into a temporary folder, once per worker count asked for, so the numbers compare on the
same machine. The paper's M0 needed 5,000 images: the output says how long that would take.

    python bench/bench_render.py [--count 12] [--size 640x360] [--samples 32] [--workers 1 2]
                                 [--mesh PATH:CLASS[:SCALE]] [--config render.toml] [--no-denoise]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path

from dal import config as dal_config
from dal.blender.config import RenderConfig, replace_in
from dal.blender.job import ModelSpec, RenderJob
from dal.blender.parts import write_blade
from dal.blender.render import render_dataset

PAPER_IMAGES = 5000


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=12, help="images per measurement")
    parser.add_argument("--size", default="640x360")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[1])
    parser.add_argument("--mesh", help="PATH:CLASS[:SCALE]; default: the generated blade")
    parser.add_argument("--config", type=Path, help="TOML knobs (defaults otherwise)")
    parser.add_argument("--no-denoise", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    width, height = (int(v) for v in args.size.lower().split("x"))
    cfg = dal_config.load(RenderConfig, args.config) if args.config else RenderConfig()
    cfg = replace_in(
        cfg,
        render={
            "width": width,
            "height": height,
            "samples": args.samples,
            "denoise": not args.no_denoise,
        },
    )
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-render-") as tmp:
        if args.mesh:
            model = ModelSpec.parse(args.mesh)
        elif cfg.models:
            model = ModelSpec.parse(cfg.models[0])
        else:
            model = ModelSpec(write_blade(Path(tmp) / "blade.obj"), "blade")
        for workers in args.workers:
            job = RenderJob(cfg, (model,), args.count, Path(tmp) / f"out{workers}", args.seed)
            summary = render_dataset(job, workers=workers, progress=False)
            labels = [json.loads(p.read_text()) for p in (job.out_dir / "labels").glob("*.json")]
            attempts = sum(rec["attempts"] for rec in labels)
            ipm = summary.images_per_minute
            results.append(
                {
                    "workers": workers,
                    "device": labels[0]["device"] if labels else None,
                    "images": summary.rendered,
                    "seconds": round(summary.seconds, 1),
                    "images_per_min": round(ipm, 2),
                    "scenes_drawn_per_image": round(attempts / max(1, len(labels)), 2),
                    "hours_for_paper_set": round(PAPER_IMAGES / ipm / 60, 1) if ipm else None,
                }
            )
    print(
        json.dumps(
            {
                "benchmark": "dal render",
                "mesh": str(model.path.name),
                "size": f"{width}x{height}",
                "samples": args.samples,
                "denoise": not args.no_denoise,
                "cpu_count": os.cpu_count(),
                "machine": platform.machine(),
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()

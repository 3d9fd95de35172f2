"""Render a synthetic, automatically annotated COCO training set from 3D meshes (Cycles).

Each image shows one or more target meshes under random pose, material and lighting, among
distractor objects, in front of a photo or procedural background (Eversberg & Lambrecht 2024,
after ignc-research/blender-gen). Boxes come from the rendered instance pass: visible pixels
only, with each instance's visible fraction. Same --seed, same dataset, whatever --workers.
Stopping and running the same command again resumes: finished images are kept.

examples:
  dal render --model part.obj:bracket --count 5000 --out renders/bracket
  dal render --model blade.stl:blade:0.001 --config render.toml --workers 2 --preview \\
      --intrinsics 1066.8,1067.5,313.0,181.3 --out renders/blade
  python -m dal.config dal.blender.config:RenderConfig > render.toml   # all knobs, documented
"""

from __future__ import annotations

import argparse
import io
import logging
import multiprocessing as mp
import os
import queue
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dal import config as dal_config
from dal.blender import dataset
from dal.blender.config import RenderConfig, replace_in
from dal.blender.job import ModelSpec, RenderJob, absolute, resolve_config_paths
from dal.blender.presets import PRESETS, merged
from dal.errors import ConfigError, DalError, DatasetError
from dal.fileio import atomic_write_bytes

logger = logging.getLogger(__name__)

POLL_S = 0.5
_BPY_RESOURCE_PATH = re.compile(r"[/\\]bpy[/\\]\d+\.\d+([/\\]|$)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="PATH:CLASS[:SCALE]",
        help="target mesh (obj, ply, stl, glb), its class name and metres per "
        "mesh unit (default 1); repeat for several meshes or classes",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--count", type=int, default=100, help="number of images (default 100)")
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="paper",
        help="starting knobs: 'paper' (default) or 'workbench' (part on a bench, from above)",
    )
    parser.add_argument(
        "--config",
        type=Path,
        help="TOML file of render knobs "
        "(python -m dal.config dal.blender.config:RenderConfig prints them)",
    )
    parser.add_argument("--seed", type=int, default=0, help="same seed, same dataset (default 0)")
    parser.add_argument(
        "--workers", type=int, default=1, help="parallel Blender processes (default 1)"
    )
    parser.add_argument("--size", metavar="WxH", help="image size (default 640x360)")
    parser.add_argument(
        "--intrinsics",
        metavar="FX,FY,CX,CY",
        help="real camera intrinsics in pixels at the output size (OpenCV)",
    )
    parser.add_argument("--samples", type=int, help="Cycles samples per pixel (default 64)")
    parser.add_argument("--no-denoise", action="store_true", help="turn OpenImageDenoise off")
    parser.add_argument("--device", choices=("auto", "cpu", "gpu"), help="render device")
    parser.add_argument("--format", choices=("jpg", "png"), help="image format (default jpg)")
    parser.add_argument("--masks", action="store_true", help="store visible masks as COCO RLE")
    parser.add_argument("--backgrounds", metavar="DIR", help="folder of background photos")
    parser.add_argument("--textures", metavar="DIR", help="folder of texture images")
    parser.add_argument("--hdris", metavar="DIR", help="folder of .exr/.hdr environment maps")
    parser.add_argument(
        "--preview",
        action="store_true",
        help="write preview.jpg: a contact sheet of the first images with boxes",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--size {text!r} must be WIDTHxHEIGHT, e.g. 640x360") from None
    return w, h


def _parse_floats(text: str, n: int, option: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != n:
        raise ConfigError(f"{option} {text!r} must be {n} comma-separated numbers")
    return values


def build_config(args: argparse.Namespace) -> RenderConfig:
    """Preset <- config file <- command-line overrides, checked like a file."""
    data = PRESETS[args.preset]
    source = f"preset {args.preset}"
    if args.config:
        raw = dal_config.read_toml(args.config)
        data = merged(data, resolve_config_paths(raw, args.config.resolve().parent))
        source = f"{args.config} (over {source})"
    cfg = dal_config.from_dict(RenderConfig, data, source)
    render: dict[str, Any] = {}
    if args.size:
        render["width"], render["height"] = _parse_size(args.size)
    for key in ("samples", "device", "format"):
        if getattr(args, key) is not None:
            render[key] = getattr(args, key)
    if args.no_denoise:
        render["denoise"] = False
    if args.masks:
        render["masks"] = True
    overrides: dict[str, dict[str, Any]] = {"render": render}
    if args.intrinsics:
        overrides["camera"] = {"intrinsics": _parse_floats(args.intrinsics, 4, "--intrinsics")}
    if args.backgrounds:
        overrides["background"] = {"image_dir": str(absolute(args.backgrounds))}
    if args.textures:
        overrides["materials"] = {"texture_dir": str(absolute(args.textures))}
    if args.hdris:
        overrides["lighting"] = {"hdri_dir": str(absolute(args.hdris))}
    return replace_in(cfg, **{k: v for k, v in overrides.items() if v})


def build_job(args: argparse.Namespace) -> RenderJob:
    cfg = build_config(args)
    models = tuple(ModelSpec.parse(t) for t in (*cfg.models, *args.model))
    return RenderJob(cfg, models, args.count, absolute(args.out), args.seed)


# ---------------------------------------------------------------------------------------------
# running


@dataclass(frozen=True)
class RenderSummary:
    rendered: int  # images rendered by this run
    skipped: int  # images already there (resume)
    seconds: float
    coco_path: Path
    preview_path: Path | None = None

    @property
    def images_per_minute(self) -> float:
        return 60.0 * self.rendered / self.seconds if self.seconds > 0 else 0.0


def _threads(job: RenderJob, workers: int) -> int:
    if job.config.render.threads:
        return job.config.render.threads
    return max(1, (os.cpu_count() or 1) // workers)


def _child(job: RenderJob, indices: list[int], threads: int, messages: Any) -> None:
    """Body of a spawned worker process: report each finished index, or the error."""
    # Spawn copies the parent's sys.path, which holds the script folders `import bpy` added
    # there; one of them has a `bpy` package that would shadow the real module here.
    sys.path[:] = [p for p in sys.path if not _BPY_RESOURCE_PATH.search(p)]
    from dal.blender.worker import render_indices

    logging.basicConfig(level=logging.WARNING)
    try:
        render_indices(job, indices, threads, on_done=lambda i: messages.put(("done", i)))
        messages.put(("finished", None))
    except DalError as err:
        messages.put(("error", str(err)))
    except Exception as err:  # a bug: pass it on so the parent reports it, then re-raise
        messages.put(("error", f"{type(err).__name__}: {err}"))
        raise


def _run_processes(job: RenderJob, todo: list[int], workers: int, tick: Any) -> None:
    """Spawned processes (bpy keeps global state), each with every workers-th pending index."""
    ctx = mp.get_context("spawn")
    messages = ctx.Queue()
    threads = _threads(job, workers)
    procs = [
        ctx.Process(
            target=_child,
            args=(job, todo[w::workers], threads, messages),
            name=f"dal-render-{w}",
            daemon=True,
        )
        for w in range(workers)
        if todo[w::workers]
    ]
    for p in procs:
        p.start()
    finished = 0
    try:
        while finished < len(procs):
            try:
                kind, value = messages.get(timeout=POLL_S)
            except queue.Empty:
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                if dead:
                    raise DatasetError(
                        f"render worker {dead[0].name} died (exit code {dead[0].exitcode})",
                        hint="run with --workers 1 to see its error",
                    ) from None
                continue
            if kind == "done":
                tick(value)
            elif kind == "finished":
                finished += 1
            else:
                raise DatasetError(f"render worker failed: {value}")
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
            p.join(timeout=10)


def render_dataset(
    job: RenderJob, workers: int = 1, progress: bool = True, preview: bool = False
) -> RenderSummary:
    """Render the missing images of `job`, then rebuild its COCO file."""
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    job.check_inputs()
    dataset.prepare(job)
    done = dataset.done_indices(job)
    todo = [i for i in range(job.count) if i not in done]
    if done:
        logger.info("resuming %s: %d of %d images already there", job.out_dir, len(done), job.count)
    bar = _progress_bar(len(todo), progress)
    started = time.perf_counter()
    try:
        if todo and workers == 1:
            from dal.blender.worker import render_indices

            render_indices(job, todo, _threads(job, 1), on_done=lambda _i: bar.update(1))
        elif todo:
            _run_processes(job, todo, min(workers, len(todo)), lambda _i: bar.update(1))
    finally:
        bar.close()
    seconds = time.perf_counter() - started
    coco_path = dataset.write_coco(job)
    preview_path = write_preview(job) if preview else None
    summary = RenderSummary(len(todo), len(done), seconds, coco_path, preview_path)
    if todo:
        logger.info(
            "rendered %d images in %.1f s: %.1f images/min (%dx%d, %d samples, %d worker(s))",
            summary.rendered,
            seconds,
            summary.images_per_minute,
            job.config.render.width,
            job.config.render.height,
            job.config.render.samples,
            workers,
        )
    return summary


def _progress_bar(total: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit="img", desc="render", disable=not enabled or total == 0)


def write_preview(job: RenderJob, count: int = 24, columns: int = 6) -> Path:
    """preview.jpg: the first `count` images with their boxes and visible fractions."""
    from PIL import Image

    from dal.drawing import contact_sheet, draw_detections

    records = dataset.read_labels(job)[:count]
    if not records:
        raise DatasetError(f"no finished images in {job.out_dir} to preview")
    names = job.class_names
    tiles, captions = [], []
    for rec in records:
        with Image.open(job.out_dir / rec["file_name"]) as im:
            image = im.convert("RGB")
        boxes = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in rec["annotations"])]
        labels = [names.index(a["class"]) + 1 for a in rec["annotations"]]
        tiles.append(draw_detections(image, boxes, labels, class_names=names))
        fractions = " ".join(f"{a['visible_fraction']:.2f}" for a in rec["annotations"])
        captions.append(f"#{rec['index']} vis {fractions}")
    sheet = contact_sheet(
        tiles, columns=columns, tile_width=min(320, job.config.render.width), captions=captions
    )
    buf = io.BytesIO()
    sheet.save(buf, "JPEG", quality=85)
    return atomic_write_bytes(job.out_dir / "preview.jpg", buf.getvalue())


def run(args: argparse.Namespace) -> int:
    job = build_job(args)
    summary = render_dataset(job, args.workers, progress=not args.no_progress, preview=args.preview)
    print(
        f"{summary.rendered} images rendered, {summary.skipped} already there; "
        f"COCO: {summary.coco_path}"
    )
    if summary.rendered:
        print(
            f"{summary.images_per_minute:.1f} images/min "
            f"({summary.seconds:.0f} s, {args.workers} worker(s))"
        )
    if summary.preview_path:
        print(f"preview: {summary.preview_path}")
    return 0

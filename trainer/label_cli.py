"""Labels in and out of the trainer: COCO, CVAT "COCO 1.0" and Label Studio.

  dal label queue  --config trainer.toml [--limit 25] [--sheet queue.jpg]
      unlabelled samples, most informative first (file, agent, score, the model's boxes)
  dal label export --config trainer.toml --format coco|cvat|labelstudio --out DIR
      [--which all|labelled|unlabelled] [--images copy|link|none] [--predictions]
      a folder for the labelling tool: images/ plus annotations.json (COCO),
      annotations.zip (CVAT: create the task from images/, then upload annotations as
      "COCO 1.0") or tasks.json + label_config.xml (Label Studio, with the model's
      detections as predictions)
  dal label import FILE --config trainer.toml [--format auto] [--dry-run]
      the file the tool exported back: COCO/CVAT JSON or zip, or Label Studio's JSON export.
      Checked completely first; nothing is stored unless every entry is good.
  dal label serve  --config trainer.toml [--host 127.0.0.1] [--port 9090]
      Label Studio's ML backend: /predict answers with the current model's boxes as
      pre-annotations, /webhook stores finished annotations as labels ([labelstudio] section;
      `dal trainer serve` runs it too with enabled = true). Export its tasks with
      `dal label export --format labelstudio --live` so their images load from it.

New labels start a fine-tune job once they settle ([finetune] auto). See docs/trainer.md.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from pathlib import Path

from dal.errors import ConfigError
from dal.trainer.cli import EX_CONFIG, add_config_argument
from dal.trainer.config import TrainerConfig, load_trainer_config
from dal.trainer.jobs import JobContext
from dal.trainer.labels import FORMATS
from dal.trainer.labels.documents import DEFAULT_URL_PREFIX
from dal.trainer.labels.export import IMAGE_MODES, WHICH
from dal.trainer.store import Sample


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    queue = sub.add_parser("queue", help="list unlabelled samples, most informative first")
    add_config_argument(queue)
    queue.add_argument("--limit", type=int, default=25)
    queue.add_argument("--json", action="store_true", help="JSON instead of a table")
    queue.add_argument("--sheet", type=Path, help="write a JPEG/PNG sheet of them with the boxes")
    export = sub.add_parser("export", help="write samples and labels for a labelling tool")
    add_config_argument(export)
    export.add_argument("--format", choices=FORMATS, required=True)
    export.add_argument("--out", type=Path, required=True, help="output folder")
    export.add_argument("--which", choices=WHICH, default="all")
    export.add_argument("--images", choices=IMAGE_MODES, default="copy")
    export.add_argument(
        "--predictions",
        action="store_true",
        help="COCO/CVAT: the model's boxes as pre-annotations on unlabelled images",
    )
    export.add_argument("--min-score", type=float, default=0.3, help="for predictions")
    export.add_argument(
        "--url-prefix", default=DEFAULT_URL_PREFIX, help="Label Studio: image URL before the name"
    )
    export.add_argument(
        "--live",
        action="store_true",
        help="Label Studio: image URLs served by `dal label serve` ([labelstudio] section)",
    )
    serve = sub.add_parser("serve", help="run the Label Studio ML backend (predict, webhook)")
    add_config_argument(serve)
    serve.add_argument("--host", help="bind address (default [labelstudio] host)")
    serve.add_argument("--port", type=int, help="port (default [labelstudio] port)")
    imp = sub.add_parser("import", help="store labels from a labelling tool's export")
    imp.add_argument("file", type=Path)
    add_config_argument(imp)
    imp.add_argument("--format", choices=("auto", *FORMATS), default="auto")
    imp.add_argument(
        "--allow-unknown",
        action="store_true",
        help="skip images that are no sample of this trainer",
    )
    imp.add_argument("--dry-run", action="store_true", help="check the file, store nothing")


def _queue(ctx: JobContext, args: argparse.Namespace) -> int:
    samples = ctx.store.queue(args.limit)
    names = ctx.class_names()
    if args.json:
        rows = [
            {
                "sample_id": s.sample_id,
                "agent": s.agent,
                "score": s.score,
                "file": str(s.path),
                "captured_at": s.captured_at,
                "detections": len(s.detections),
            }
            for s in samples
        ]
        print(json.dumps(rows, indent=2))
    else:
        print(f"{ctx.store.counts().unlabelled} unlabelled; the {len(samples)} most informative:")
        for s in samples:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s.captured_at))
            print(f"{s.score:8.3f}  {s.agent:<12} {when}  {len(s.detections):3d} boxes  {s.path}")
    if args.sheet and samples:
        _sheet(samples, names, args.sheet)
        print(f"sheet: {args.sheet}")
    return 0


def _sheet(samples: list[Sample], class_names: tuple[str, ...], path: Path) -> None:
    import numpy as np

    from dal.coco import read_image
    from dal.drawing import contact_sheet, draw_detections

    tiles, captions = [], []
    for s in samples:
        boxes = np.asarray([d["box"] for d in s.detections], dtype=np.float64).reshape(-1, 4)
        labels = [int(d["label"]) for d in s.detections]
        scores = [float(d["score"]) for d in s.detections]
        tiles.append(
            draw_detections(read_image(s.path), boxes, labels, scores, ["bg", *class_names])
        )
        captions.append(f"{s.score:.2f} {s.sample_id}")
    contact_sheet(tiles, columns=5, tile_width=240, captions=captions).save(path)


def _serve(config: TrainerConfig, args: argparse.Namespace) -> int:
    """Until SIGINT/SIGTERM. A config mistake (no auth on a public address) exits 78."""
    from dal.trainer.labels.ls_server import label_server

    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    with JobContext.open(config) as ctx:
        try:
            server = label_server(
                config.labelstudio, ctx.store, ctx.registry, None, args.host, args.port
            )
        except ConfigError as err:
            print(f"dal label: error: {err}", file=sys.stderr)
            return EX_CONFIG
        server.start()
        version = server.backend.model.version()
        print(f"Label Studio ML backend on {server.url} (model {version})", flush=True)
        try:
            stop.wait()
        finally:
            server.stop()
    return 0


def run(args: argparse.Namespace) -> int:
    from dal.trainer.labels.export import export_labels
    from dal.trainer.labels.importer import import_labels

    try:
        config = load_trainer_config(args.config)
    except ConfigError as err:
        print(f"dal label: error: {err}", file=sys.stderr)
        return EX_CONFIG
    if args.action == "serve":
        return _serve(config, args)
    image_url = None
    if args.action == "export" and args.live:
        from dal.trainer.labels.ls_server import live_image_url

        image_url = live_image_url(config.labelstudio)
    with JobContext.open(config) as ctx:
        if args.action == "queue":
            return _queue(ctx, args)
        if args.action == "export":
            result = export_labels(
                ctx.store,
                args.out,
                args.format,
                ctx.class_names(),
                args.which,
                args.images,
                args.predictions,
                args.min_score,
                args.url_prefix,
                image_url,
            )
            print(f"exported {result.images} images ({result.labelled} labelled) to {result.path}")
            return 0
        result = import_labels(
            args.file,
            ctx.store,
            ctx.class_names() or None,
            args.format,
            args.allow_unknown,
            args.dry_run,
        )
        verb = "checked" if args.dry_run else "stored"
        print(
            f"{verb} labels for {len(result.labels)} samples ({result.fmt}); "
            f"{result.unlabelled} without labels, {len(result.unknown)} unknown images skipped"
        )
        return 0

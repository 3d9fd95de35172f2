"""The `dal` command: one entry point, one subcommand per job.

Subcommand modules are imported only when their subcommand runs, so `dal agent` never imports
torch and `dal --help` stays fast. Each module offers `add_arguments(parser)` and `run(args)`.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from dal.errors import DalError

# name -> (module, one-line help). The module's docstring is the subcommand's long description.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "dataset": ("dal.procedural", "make a procedural COCO dataset of simple parts (tests, demos)"),
    "train": ("dal.trainer.train", "train or fine-tune a Faster R-CNN detector on COCO data"),
    "eval": ("dal.trainer.evaluate", "AP@[0.5:0.95], AP50, AP75 of a checkpoint or ONNX model"),
    "export": ("dal.trainer.export", "checkpoint -> ONNX detector with probs and P2 feature"),
    "render": ("dal.blender.render", "render a synthetic COCO training set from 3D meshes"),
    "demo": ("dal.demo.cli", "the active-learning loop end to end on generated data"),
    "agent": (
        "dal.agent.cli",
        "the edge daemon: capture, score, pool, query, ship, hot-swap models",
    ),
    "import-ycb": ("dal.ycb", "convert YCB-Video frames (color + box.txt) to COCO"),
    "experiment": (
        "dal.trainer.experiment",
        "the paper's protocol: R vs S+R, strategies, k, seeds, cycles; table + plots",
    ),
    "trainer": (
        "dal.trainer.cli",
        "central service: ingest samples, fine-tune, gate, sign and publish models",
    ),
    "label": ("dal.trainer.label_cli", "export/import labels: COCO, CVAT COCO 1.0, Label Studio"),
    "models": ("dal.trainer.models_cli", "model registry: list, show, promote, rollback"),
    "keys": ("dal.trainer.keys_cli", "generate the Ed25519 key pair that signs models"),
    "monitor": ("dal.trainer.monitor", "live view of every agent from the MQTT topics"),
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    """Build the parser; only the subcommand named in argv gets its module imported."""
    parser = argparse.ArgumentParser(
        prog="dal",
        description="Train an industrial object detector from a 3D model and a few real "
        "labelled images, and keep improving it on the shop floor (deep active learning).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        if name != wanted:
            sub.add_parser(name, help=help_text)
            continue
        module = importlib.import_module(module_name)
        sp = sub.add_parser(
            name,
            help=help_text,
            description=module.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(sp)
        sp.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except DalError as err:
        print(f"dal {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"dal {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""The paper's experiment protocol on your data: R vs S+R, query strategies, k, seeds, cycles.

Eversberg & Lambrecht (2024), Table A1 and Figures 6 and 8, on any real COCO pool and validation
split, with a synthetic set (`dal render`) for the base model M0:

  R      random real images, fine-tuned from the backbone's ImageNet weights alone
  S+R    M0 fine-tuned on k real images picked by random, margin, dbal or coreset
  cycles (optional) several cycles of a fixed k, re-scoring the pool with each new model

The pool is scored like the edge agent does it (exported ONNX model: summed max-margin of every
box, and the P2 feature); picked images get their ground-truth labels (the oracle). Random runs
repeat over every --seeds value, the other strategies use the first seed (all of them with
--repeat-all). Each fine-tuning run
makes --epochs passes over the labelled set, at least --steps SGD steps (the labelled images
repeat to fill them), so the budget grows with the labels; its final model is evaluated once on
the validation split.

Writes to --out: results.csv (one row per run, wall time included), experiment.json (every
setting, the plan, software versions), table.md (Table A1 layout), fig6_single_cycle.png and
fig8_multi_cycle.png. Running the same command again skips the runs already in results.csv, so
an interrupted experiment resumes and a longer --seeds/--k list only adds runs.

example (YCB-Video frames imported with `dal import-ycb`, a render of the same object):
  dal experiment --real pool/annotations.json --val val/annotations.json \\
      --synthetic renders/annotations.json --input-size 480x360 --k 2 5 10 --seeds 0 1 \\
      --cycles 3 --cycle-k 5 --out experiments/ycb
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from dal.errors import ConfigError
from dal.fileio import atomic_write_text
from dal.strategies import STRATEGIES
from dal.trainer.detector import ARCHITECTURES
from dal.trainer.device import add_device_arguments, set_cpu_threads
from dal.trainer.plots import figure6, figure8
from dal.trainer.protocol import Outcome, Protocol
from dal.trainer.protocol_config import ProtocolConfig, check_fingerprint, write_settings
from dal.trainer.protocol_plan import SETTINGS, Chain, plan
from dal.trainer.report import markdown_table, read_results, timing_summary

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data")
    data.add_argument("--real", type=Path, help="pool U: real training COCO JSON (required)")
    data.add_argument("--val", type=Path, help="validation COCO JSON, other scenes (required)")
    data.add_argument("--synthetic", type=Path, help="synthetic COCO JSON to train M0 on")
    data.add_argument("--base", type=Path, help="an already trained M0 checkpoint instead")
    data.add_argument("--out", type=Path, required=True, help="experiment folder")

    runs = parser.add_argument_group("runs")
    runs.add_argument("--settings", nargs="+", choices=SETTINGS, default=list(SETTINGS))
    runs.add_argument(
        "--strategies",
        nargs="+",
        choices=sorted(STRATEGIES),
        default=["random", "margin", "dbal", "coreset"],
    )
    runs.add_argument("--k", nargs="+", type=int, default=[10, 25], help="query batch sizes")
    runs.add_argument(
        "--seeds", nargs="+", type=int, default=[0, 1, 2], help="random repeats over these"
    )
    runs.add_argument("--cycles", type=int, default=0, help="multi-cycle length (0: none)")
    runs.add_argument("--cycle-k", type=int, default=25, help="images per cycle")
    runs.add_argument("--cycle-strategies", nargs="+", choices=sorted(STRATEGIES), default=["dbal"])
    runs.add_argument(
        "--repeat-all",
        action="store_true",
        help="repeat margin, dbal and coreset over --seeds too (training noise)",
    )
    runs.add_argument(
        "--report-only", action="store_true", help="only remake table and plots from results.csv"
    )

    model = parser.add_argument_group("model and training")
    model.add_argument("--arch", choices=ARCHITECTURES, default="mobilenet_v2_fpn")
    model.add_argument(
        "--backbone-weights", default="imagenet", help="'imagenet' (local file), 'none', a .pth"
    )
    model.add_argument("--input-size", default="640x360", help="model input WIDTHxHEIGHT")
    model.add_argument("--base-epochs", type=int, default=10, help="epochs of M0 on synthetic")
    model.add_argument("--steps", type=int, default=40, help="fewest SGD steps per fine-tuning run")
    model.add_argument(
        "--epochs",
        type=int,
        default=15,
        help="passes over the labelled set per fine-tuning run (the budget grows with L)",
    )
    model.add_argument("--batch-size", type=int, default=4)
    model.add_argument("--lr", type=float, help="fine-tuning rate (default: dal train's)")
    model.add_argument("--base-lr", type=float, help="M0 rate (default: dal train's)")
    model.add_argument("--no-augment", action="store_true")
    model.add_argument("--proposals", type=int, default=300, help="test-time RPN proposals")
    model.add_argument("--score-threshold", type=float, default=0.05)
    model.add_argument("--base-seed", type=int, default=0)
    model.add_argument("--threads", type=int, help="torch CPU threads (default: all cores)")
    add_device_arguments(model)
    model.add_argument(
        "--keep-checkpoints", action="store_true", help="keep every run's best.pt (disk!)"
    )

    query = parser.add_argument_group("query")
    query.add_argument("--beta", type=float, default=2.0, help="DBAL pre-filter factor")
    query.add_argument(
        "--score", choices=("margin", "entropy", "least_confidence"), default="margin"
    )
    query.add_argument("--aggregate", choices=("sum", "max", "mean"), default="sum")
    query.add_argument(
        "--allow-labelled",
        action="store_true",
        help="later cycles may pick already labelled images again (the paper's x ∈ {U, L})",
    )


def config_from_args(args: argparse.Namespace) -> ProtocolConfig:
    if args.real is None or args.val is None:
        raise ConfigError("--real and --val are required (the pool and the validation split)")
    if args.steps < 1 or args.epochs < 1 or args.base_epochs < 1 or args.batch_size < 1:
        raise ConfigError("--steps, --epochs, --base-epochs and --batch-size must be at least 1")
    if args.synthetic and args.base:
        raise ConfigError("give --synthetic (train M0 here) or --base (use this M0), not both")
    return ProtocolConfig(
        real=args.real,
        val=args.val,
        out=args.out,
        synthetic=args.synthetic,
        base=args.base,
        arch=args.arch,
        backbone_weights=args.backbone_weights,
        input_size=args.input_size,
        base_epochs=args.base_epochs,
        steps=args.steps,
        epochs=args.epochs,
        device=args.device,
        amp=args.amp,
        batch_size=args.batch_size,
        lr=args.lr,
        base_lr=args.base_lr,
        beta=args.beta,
        score_method=args.score,
        aggregate=args.aggregate,
        allow_labelled=args.allow_labelled,
        proposals=args.proposals,
        score_threshold=args.score_threshold,
        augment=not args.no_augment,
        base_seed=args.base_seed,
        keep_checkpoints=args.keep_checkpoints,
    )


def chains_from_args(args: argparse.Namespace) -> list[Chain]:
    return plan(
        args.settings,
        args.strategies,
        args.k,
        args.seeds,
        args.cycles,
        args.cycle_k,
        args.cycle_strategies,
        args.repeat_all,
    )


def _subtitle(out: Path) -> str:
    """Model, input size and fine-tuning length, from experiment.json when there is one."""
    try:
        config = json.loads((out / "experiment.json").read_text(encoding="utf-8"))["config"]
    except (OSError, ValueError, KeyError):
        return ""
    return (
        f"{config.get('arch')}, input {config.get('input_size')}, "
        f"fine-tuning {config.get('epochs', 0)} epochs over the labels, at least "
        f"{config.get('steps')} steps of batch {config.get('batch_size')}"
    )


def write_report(out: Path) -> dict[str, Path]:
    """table.md and the figures from results.csv; returns what was written."""
    subtitle = _subtitle(out)
    if not (out / "results.csv").is_file():
        raise ConfigError(f"{out}: no results.csv yet", hint="run the experiment first")
    rows = read_results(out / "results.csv")
    text = (
        "# dal experiment results\n\n"
        + (f"{subtitle}\n\n" if subtitle else "")
        + "AP@[0.5:0.95] on the validation split.\n\n"
        + markdown_table(rows)
        + "\n## Wall time\n\n"
        + timing_summary(rows)
    )
    written = {"table": atomic_write_text(out / "table.md", text)}
    for name, draw in (("fig6", figure6), ("fig8", figure8)):
        file_name = "fig6_single_cycle.png" if name == "fig6" else "fig8_multi_cycle.png"
        path = draw(rows, out / file_name, subtitle)
        if path is not None:
            written[name] = path
    return written


def run_experiment(config: ProtocolConfig, chains: list[Chain], progress: bool = False) -> Outcome:
    """Run (or resume) the plan; record settings first so a crash still leaves them."""
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    settings_path = out / "experiment.json"
    check_fingerprint(settings_path, config)
    write_settings(settings_path, config, chains)

    def say(text: str) -> None:
        print(f"[experiment] {text}", flush=True)

    return Protocol(config, say=say, progress=progress).run(chains)


def run(args: argparse.Namespace) -> int:
    set_cpu_threads(args.threads)
    if not args.report_only:
        config = config_from_args(args)
        started = time.perf_counter()
        outcome = run_experiment(config, chains_from_args(args))
        print(
            f"[experiment] {outcome.trained} runs done now, {outcome.skipped} skipped "
            f"(already in results.csv), {time.perf_counter() - started:.0f} s"
        )
    written = write_report(Path(args.out))
    print(written["table"].read_text(encoding="utf-8"))
    for name, path in written.items():
        print(f"{name}: {path}")
    return 0

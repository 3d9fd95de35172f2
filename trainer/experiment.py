"""The paper's experiment protocol on your data: R vs S+R, query strategies, k, seeds, cycles.

Eversberg & Lambrecht (2024), Table A1 and Figures 6 and 8, on any real COCO pool and validation
split, with a synthetic set (`dal render`) for the base model M0:

  R      without --initial: random real images, fine-tuned from the ImageNet backbone alone
         (random only: an untrained head has nothing to score with)
  R      with --initial N (standard real-only active learning): per seed a start model M(L0)
         trained on N random real images L0, then every strategy queries k more
  S+R    M0 fine-tuned on k real images picked by random, margin, dbal or coreset
  cycles (optional) several cycles of a fixed k, re-scoring the pool with each new model

The pool is scored like the edge agent does it (exported ONNX model: summed max-margin of every
box, or --score entropy / least_confidence, and the P2 feature); picked images get their
ground-truth labels (the oracle). Random runs repeat over every --seeds value, the other
strategies use the first seed (every seed with --repeat-all or --initial). Each fine-tuning run
makes --epochs passes over the labelled set, at least --steps SGD steps (the labelled images
repeat to fill them), so the budget grows with the labels; its final model is evaluated once on
the validation split, and its detections are kept for the bootstrap intervals.

Writes to --out: results.csv (one row per run, wall time included), experiment.json (every
setting, the plan, software versions), runs/*/detections.json, table.md (Table A1 layout, the
paired differences to random with bootstrap intervals, label efficiency), fig6_single_cycle.png,
fig8_multi_cycle.png and label_efficiency.png. Running the same command again skips the runs
already in results.csv, so an interrupted experiment resumes and a longer --seeds/--k list only
adds runs.

example (YCB-Video frames imported with `dal import-ycb`, a render of the same object):
  dal experiment --real pool/annotations.json --val val/annotations.json \\
      --synthetic renders/annotations.json --input-size 480x360 --k 2 5 10 --seeds 0 1 \\
      --cycles 3 --cycle-k 5 --out experiments/ycb
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from dal.coco import load_coco
from dal.errors import ConfigError, DalError
from dal.fileio import atomic_write_text
from dal.strategies import STRATEGIES
from dal.trainer.bootstrap import RESAMPLES
from dal.trainer.detector import ARCHITECTURES
from dal.trainer.device import add_device_arguments, set_cpu_threads
from dal.trainer.efficiency import efficiency_cells
from dal.trainer.evidence_report import evidence_sections
from dal.trainer.paired import BUDGET_S
from dal.trainer.plots import figure6, figure8, figure_efficiency
from dal.trainer.protocol import Outcome, Protocol
from dal.trainer.protocol_config import ProtocolConfig, check_fingerprint, write_settings
from dal.trainer.protocol_plan import SETTINGS, Chain, plan, plan_notes
from dal.trainer.report import blocks, markdown_table, start_models, timing_summary
from dal.trainer.results import read_results

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
        "--seeds",
        nargs="+",
        type=int,
        default=[0, 1, 2],
        help="random repeats over these (every strategy with --initial or --repeat-all)",
    )
    runs.add_argument(
        "--initial",
        type=int,
        default=0,
        metavar="N",
        help="R starts from a model trained on N random real images per seed (L0) and runs "
        "every strategy from it; 0: R from the backbone alone, random only",
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
    runs.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bars for training and pool scoring (default: when stderr is a terminal)",
    )

    stats = parser.add_argument_group("statistics")
    stats.add_argument(
        "--bootstrap",
        type=int,
        default=RESAMPLES,
        metavar="N",
        help="resamples of the validation images for the intervals of the differences to "
        "random (0: none)",
    )
    stats.add_argument(
        "--bootstrap-budget",
        type=float,
        default=BUDGET_S,
        metavar="S",
        help="fewer resamples (not below 100) when they would take longer than this",
    )

    model = parser.add_argument_group("model and training")
    model.add_argument("--arch", choices=ARCHITECTURES, default="mobilenet_v2_fpn")
    model.add_argument(
        "--backbone-weights", default="imagenet", help="'imagenet' (local file), 'none', a .pth"
    )
    model.add_argument("--input-size", default="640x360", help="model input WIDTHxHEIGHT")
    model.add_argument(
        "--base-epochs",
        type=int,
        default=10,
        help="epochs of M0 on synthetic, and of R's start model on L0 (--initial)",
    )
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
    if args.initial < 0:
        raise ConfigError("--initial must be 0 (R from the backbone) or a number of images")
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
        initial=args.initial,
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
        args.initial,
    )


def _recorded_config(out: Path) -> dict:
    try:
        return json.loads((out / "experiment.json").read_text(encoding="utf-8"))["config"]
    except (OSError, ValueError, KeyError):
        return {}


def _subtitle(config: dict) -> str:
    """Model, input size and fine-tuning length, from experiment.json when there is one."""
    if not config:
        return ""
    return (
        f"{config.get('arch')}, input {config.get('input_size')}, "
        f"fine-tuning {config.get('epochs', 0)} epochs over the labels, at least "
        f"{config.get('steps')} steps of batch {config.get('batch_size')}"
    )


def _validation(config: dict):
    """The validation split the runs were evaluated on, or None when it cannot be read."""
    try:
        return load_coco(Path(config["val"]))
    except (KeyError, OSError, DalError) as err:
        log.warning("validation split not readable (%s): no bootstrap intervals", err)
        return None


def write_report(
    out: Path, resamples: int = RESAMPLES, budget_s: float = BUDGET_S
) -> dict[str, Path]:
    """table.md and the figures from results.csv (and the runs' detections); returns what
    was written."""
    if not (out / "results.csv").is_file():
        raise ConfigError(f"{out}: no results.csv yet", hint="run the experiment first")
    config = _recorded_config(out)
    subtitle = _subtitle(config)
    rows = read_results(out / "results.csv")
    notes = start_models(rows, config)
    evidence, _ = evidence_sections(rows, out, _validation(config), resamples, budget_s)
    efficiency = ("Random labels for this AP", efficiency_cells(blocks(rows)))
    text = (
        "# dal experiment results\n\n"
        + (f"{subtitle}\n\n" if subtitle else "")
        + "".join(f"- {line}\n" for line in notes)
        + ("\n" if notes else "")
        + "AP@[0.5:0.95] on the validation split.\n\n"
        + markdown_table(rows, efficiency)
        + evidence
        + "\n## Wall time\n\n"
        + timing_summary(rows, base_given=bool(config.get("base")))
    )
    written = {"table": atomic_write_text(out / "table.md", text)}
    figures = (
        ("fig6", figure6, "fig6_single_cycle.png"),
        ("fig8", figure8, "fig8_multi_cycle.png"),
        ("efficiency", figure_efficiency, "label_efficiency.png"),
    )
    for name, draw, file_name in figures:
        path = draw(rows, out / file_name, subtitle, notes)
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
        for note in plan_notes(args.settings, args.strategies, args.cycles, args.initial):
            print(f"[experiment] note: {note}", flush=True)
        progress = sys.stderr.isatty() if args.progress is None else args.progress
        started = time.perf_counter()
        outcome = run_experiment(config, chains_from_args(args), progress)
        print(
            f"[experiment] {outcome.trained} runs done now, {outcome.skipped} skipped "
            f"(already in results.csv), {time.perf_counter() - started:.0f} s"
        )
    written = write_report(Path(args.out), args.bootstrap, args.bootstrap_budget)
    print(written["table"].read_text(encoding="utf-8"))
    for name, path in written.items():
        print(f"{name}: {path}")
    return 0

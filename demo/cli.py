"""The paper's loop end to end, on one machine, on data this project makes itself.

Default (networked): the whole system on CPU, no camera, no external broker.
1. a part mesh (`dal.blender.parts`) is rendered twice with Cycles: a synthetic training set
   (preset 'paper') and "workbench" frames (preset 'workbench'). The workbench frames are
   RENDERED STAND-INS for real camera frames, not real data: the point is the loop;
2. the base model M0 is trained on the synthetic set;
3. a local MQTT broker starts (mosquitto when installed, else an embedded amqtt), then the
   trainer service (ground-truth oracle = the workbench pool's COCO, promotion gate, signed
   model publishing) and the edge agent (folder source replaying the workbench pool);
4. each cycle: an MQTT command makes the agent query its pool (DBAL), ship the picks; the oracle
   labels them; the trainer fine-tunes, gates, publishes; the agent verifies the signature,
   hot-swaps the model and re-scores its pool before the next cycle.
Writes results.json, ap_vs_labels.png and cycleN-picks.jpg (the picks with their labels), and
agent.toml + trainer.toml, so `dal agent status`, `dal models list` and `dal monitor` work on it.

`--offline`: the same loop without network, broker or Blender (procedural images, direct calls).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from dal.demo.networked import run_networked
from dal.demo.offline import run_offline
from dal.demo.plan import plan_from_args
from dal.errors import DalError
from dal.strategies import STRATEGIES
from dal.trainer.device import add_device_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `dal demo`; the plan's counts can each be overridden."""
    parser.add_argument("--out", type=Path, default=Path("demo-output"))
    parser.add_argument(
        "--fast",
        action="store_true",
        help="tiny counts, 1-2 epochs: the plumbing in 1-2 min, AP near 0",
    )
    parser.add_argument(
        "--offline", action="store_true", help="no broker/agent/trainer, procedural images"
    )
    parser.add_argument("--cycles", type=int, default=2)
    parser.add_argument("--k", type=int, default=10, help="images labelled per cycle")
    parser.add_argument("--strategy", choices=sorted(STRATEGIES), default="dbal")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--broker",
        choices=("auto", "mosquitto", "amqtt"),
        default="auto",
        help="local broker: mosquitto when installed, else embedded amqtt (default auto)",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=0.0,
        help="promotion gate: a candidate may be this much AP below the current model",
    )
    parser.add_argument(
        "--relative-tolerance",
        type=float,
        default=0.05,
        help="promotion gate: ... or this fraction of the current AP, whichever is larger",
    )
    add_device_arguments(parser, amp=False)
    parser.add_argument("--synthetic", type=int, help="synthetic images (overrides the plan)")
    parser.add_argument("--pool", type=int, help="workbench pool images")
    parser.add_argument("--val", type=int, help="workbench validation images")
    parser.add_argument("--epochs", type=int, help="base model epochs")
    parser.add_argument("--cycle-epochs", type=int, help="fine-tune epochs per cycle")
    parser.add_argument("--samples", type=int, help="Cycles samples per pixel")
    parser.add_argument(
        "--keep-running",
        action="store_true",
        help="after the cycles keep broker, trainer and agent up until Ctrl-C, for dal monitor",
    )
    parser.add_argument("--verbose", action="store_true", help="log INFO from every component")


def run(args: argparse.Namespace) -> int:
    """The plan checked against --k and --cycles, then the offline or the networked demo."""
    from dal.trainer.device import set_cpu_threads

    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    set_cpu_threads(None)
    plan = plan_from_args(args)
    if plan.pool < args.k * args.cycles:
        raise DalError(
            f"--pool {plan.pool} is too small for {args.cycles} cycles of k={args.k}",
            hint="raise --pool or lower --k/--cycles",
        )
    if args.offline and args.keep_running:
        raise DalError(
            "--keep-running keeps the broker, trainer and agent up: the offline demo has none",
            hint="drop --offline or --keep-running",
        )
    if args.offline:
        run_offline(args.out, plan, args.cycles, args.k, args.strategy, args.seed)
    else:
        run_networked(args.out, plan, args)
    return 0

"""The central trainer service and its offline tools.

  dal trainer serve    --config trainer.toml   run the service (systemd: Type=notify, watchdog)
  dal trainer status   --config trainer.toml   samples, labels, agents, models, last job (from the
                                               databases; works while the service runs)
  dal trainer finetune --config trainer.toml   run one fine-tune job now (train, evaluate, gate,
                                               export, verify, sign); the running service
                                               publishes a promoted model within a second
  dal trainer config                           print the documented default configuration

See docs/trainer.md. Keys: `dal keys generate`; labels: `dal label`; models: `dal models`.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from dal import config as cfg
from dal.errors import ConfigError
from dal.trainer.config import TrainerConfig, load_trainer_config

EX_CONFIG = 78


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        help="trainer TOML (default: built-in defaults + DAL_TRAINER__* environment)",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    serve = sub.add_parser("serve", help="run the trainer service until stopped")
    add_config_argument(serve)
    status = sub.add_parser("status", help="print the trainer's state as JSON")
    add_config_argument(status)
    finetune = sub.add_parser("finetune", help="run one fine-tune job now")
    add_config_argument(finetune)
    finetune.add_argument(
        "--if-new-labels", action="store_true", help="skip when no label changed since the last job"
    )
    sub.add_parser("config", help="print the documented default trainer.toml")


def offline_status(config: TrainerConfig) -> dict[str, Any]:
    """The trainer's state read from its databases (no MQTT)."""
    from dal.trainer.jobs import JobContext, last_job_result

    with JobContext.open(config) as ctx:
        current, previous = ctx.registry.current(), ctx.registry.previous()
        return {
            "data_dir": str(config.trainer.data_dir),
            "store": asdict(ctx.store.counts()),
            "agents": ctx.store.agents(),
            "current_model": current.version if current else None,
            "current_ap": current.ap if current else None,
            "previous_model": previous.version if previous else None,
            "models": len(ctx.registry),
            "last_job": last_job_result(ctx),
        }


def _serve(path: Path | None) -> int:
    """A config mistake exits 78 (EX_CONFIG): the unit's RestartPreventExitStatus stops
    systemd from restarting into the same mistake every 5 s."""
    from dal.runtimes import check_single_runtime
    from dal.trainer.serve import serve

    try:
        check_single_runtime()
        config = load_trainer_config(path)
        return serve(config)
    except ConfigError as err:
        print(f"dal trainer: error: {err}", file=sys.stderr)
        return EX_CONFIG


def run(args: argparse.Namespace) -> int:
    if args.action == "config":
        sys.stdout.write(cfg.render_toml(TrainerConfig, title=TrainerConfig.TITLE))
        return 0
    if args.action == "serve":
        return _serve(args.config)
    config = load_trainer_config(args.config)
    if args.action == "status":
        print(json.dumps(offline_status(config), indent=2, default=str))
        return 0
    from dal.trainer.jobs import JobContext, run_finetune

    with JobContext.open(config) as ctx:
        result = run_finetune(ctx, force=not args.if_new_labels)
    print(json.dumps(result.to_dict(), indent=2))
    return 0 if result.outcome in ("promoted", "rejected", "skipped") else 1

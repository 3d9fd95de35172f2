"""The model registry: every model with its lineage, metrics and training data.

  dal models list     --config trainer.toml            one line per model, oldest first
  dal models show     VERSION --config trainer.toml    everything about one model (JSON)
  dal models promote  VERSION --config trainer.toml    make it current (exported, checked and
                                                       signed first if it never was)
  dal models rollback --config trainer.toml            make the previous model current again
  dal models promote  VERSION --group line3 [--canary [AGENT]] | --agents cam1,cam2
                                                       only these agents (trainer/rollout_cli.py)
  dal models clear    --group line3 | --agents cam1    drop such a target again
  dal models status   [--json]                         who runs which model, probation, seen

States: current (agents run it), previous (the rollback target), archived, candidate, rejected
(failed the gate), failed (training, export or parity check failed). A running trainer service
publishes the new current model within a second of a promote or rollback.
"""

from __future__ import annotations

import argparse
import json
import time

from dal.errors import ConfigError
from dal.trainer import rollout_cli
from dal.trainer.cli import add_config_argument
from dal.trainer.config import load_trainer_config
from dal.trainer.registry import ModelRecord


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = sub.add_parser("list", help="list every model")
    add_config_argument(listing)
    listing.add_argument("--json", action="store_true", help="JSON instead of a table")
    show = sub.add_parser("show", help="show one model as JSON")
    show.add_argument("version")
    add_config_argument(show)
    promote = sub.add_parser("promote", help="make a model current")
    promote.add_argument("version")
    promote.add_argument("--reason", default="promoted by hand")
    rollout_cli.add_promote_arguments(promote)
    add_config_argument(promote)
    rollback = sub.add_parser("rollback", help="make the previous model current again")
    rollback.add_argument("--reason", default="rolled back by hand")
    add_config_argument(rollback)
    rollout_cli.add_subcommands(sub, add_config_argument)


def table(records: list[ModelRecord]) -> str:
    """The `dal models list` table."""
    header = ("VERSION", "STATE", "PARENT", "AP", "LABELLED", "CREATED", "REASON")
    rows = [header]
    for r in records:
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.created))
        ap = f"{r.ap:.4f}" if r.ap is not None else "-"
        labelled = r.training.get("real_images")
        rows.append(
            (
                r.version,
                r.state,
                r.parent or "-",
                ap,
                "-" if labelled is None else str(labelled),
                created,
                r.reason[:60],
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return (
        "\n".join(
            "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
        )
        + "\n"
    )


def run(args: argparse.Namespace) -> int:
    from dal.trainer.jobs import JobContext, release

    config = load_trainer_config(args.config)
    with JobContext.open(config) as ctx:
        registry = ctx.registry
        if args.action == "list":
            records = registry.list()
            if args.json:
                print(json.dumps([r.to_dict() for r in records], indent=2))
            else:
                print(table(records), end="")
            return 0
        if args.action == "show":
            record = registry.require(args.version)
            out = record.to_dict()
            out["history"] = registry.history(args.version)
            print(json.dumps(out, indent=2))
            return 0
        if args.action == "status":
            return rollout_cli.status(config, registry, args)
        if args.action == "clear":
            return rollout_cli.clear(registry, args)
        if args.action == "promote" and rollout_cli.targeted(args):
            registry.require(args.version)
            release(ctx, args.version)
            return rollout_cli.promote(config, registry, args)
        if args.action == "promote":
            if args.canary:
                raise ConfigError("--canary needs --group", hint="e.g. --group line3 --canary cam1")
            registry.require(args.version)
            release(ctx, args.version)
            record = registry.promote(args.version, args.reason)
        else:
            record = registry.rollback(args.reason)
        print(f"current model: {record.version}")
        return 0

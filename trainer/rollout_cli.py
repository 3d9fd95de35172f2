"""`dal models promote --agents/--group/--canary`, `dal models clear` and `dal models status`.

  dal models promote VERSION --agents cam1,cam2     these agents run VERSION
  dal models promote VERSION --group line3          the agents of group line3 run VERSION
  dal models promote VERSION --group line3 --canary cam1 [--canary-timeout 900]
                                                    cam1 first; the group once cam1 runs it
                                                    with probation passed
  dal models clear --agents cam1 | --group line3    back to the group's or global manifest
  dal models status [--json]                        who runs what, from the retained statuses

Targets live in the registry (trainer/rollout_store.py); the running `dal trainer serve`
publishes them. A canary rollout reads the agents' statuses over MQTT with the [mqtt] settings
of the trainer config.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from typing import Any

from dal.errors import ConfigError, LinkError
from dal.link import AgentStatus, Link
from dal.link.topics import check_agent_id, check_group_id
from dal.trainer.config import TrainerConfig
from dal.trainer.registry import Registry
from dal.trainer.rollout import FleetView, canary_rollout
from dal.trainer.rollout_store import TargetStore

FIRST_OF_GROUP = "first"  # --canary without a name
STATUS_COLUMNS = ("AGENT", "STATE", "GROUP", "RUNS", "TARGET", "FOLLOWS", "PROBATION", "SEEN")


def _names(value: str, check: Any, what: str) -> list[str]:
    names = [n.strip() for n in value.split(",") if n.strip()]
    if not names:
        raise ConfigError(f"--{what} needs at least one name", hint=f"e.g. --{what} cam1,cam2")
    try:
        return [check(n) for n in names]
    except LinkError as err:
        raise ConfigError(f"--{what}: {err.args[0]}", hint=err.hint) from None


MAX_WAIT_S = 86_400.0


def _seconds(text: str) -> float:
    """A finite number of seconds in (0, one day]: argparse's type for the waits."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value <= MAX_WAIT_S:  # NaN fails too
        raise argparse.ArgumentTypeError(f"{text!r}: give seconds in (0, {MAX_WAIT_S:g}]")
    return value


def add_promote_arguments(promote: argparse.ArgumentParser) -> None:
    where = promote.add_mutually_exclusive_group()
    where.add_argument("--agents", help="comma-separated agent ids: only these run the model")
    where.add_argument("--group", help="group id ([agent] group): only its agents run the model")
    promote.add_argument(
        "--canary",
        nargs="?",
        const=FIRST_OF_GROUP,
        metavar="AGENT",
        help="with --group: this agent first (default: the group's first agent by id), the "
        "group only once it runs the model with probation passed",
    )
    promote.add_argument(
        "--canary-timeout",
        type=_seconds,
        default=900.0,
        metavar="S",
        help="seconds to wait for the canary (default 900); then stop, the group unchanged",
    )


def add_subcommands(sub: Any, add_config: Any) -> None:
    clear = sub.add_parser("clear", help="drop an agent's or group's own model target")
    where = clear.add_mutually_exclusive_group(required=True)
    where.add_argument("--agents", help="comma-separated agent ids")
    where.add_argument("--group", help="group id")
    add_config(clear)
    status = sub.add_parser("status", help="which agent runs which model (from MQTT)")
    status.add_argument("--json", action="store_true", help="JSON instead of a table")
    status.add_argument(
        "--wait", type=_seconds, default=2.0, help="seconds to collect the retained statuses"
    )
    add_config(status)


def targeted(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "agents", None) or getattr(args, "group", None))


def _connect(config: TrainerConfig, purpose: str) -> tuple[Link, FleetView]:
    link = Link(config.mqtt.link_config(f"{config.trainer.id}-{purpose}-{os.getpid()}"))
    view = FleetView(link)
    link.start(wait_s=10.0)
    return link, view


def _settle(link: Link, wait_s: float) -> None:
    """Give the broker time to hand over the retained statuses."""
    deadline = time.monotonic() + max(wait_s, 0.0)
    while time.monotonic() < deadline and not link.subscriptions_settled():
        time.sleep(0.05)
    time.sleep(max(0.0, min(wait_s, deadline - time.monotonic())))


def promote(config: TrainerConfig, registry: Registry, args: argparse.Namespace) -> int:
    """The targeted promote (the model is released already)."""
    version = args.version
    if args.canary and not args.group:
        raise ConfigError("--canary needs --group", hint="e.g. --group line3 --canary cam1")
    with TargetStore(registry.folder) as targets:
        if args.agents:
            agents = _names(args.agents, check_agent_id, "agents")
            targets.set("agent", agents, version, args.reason)
            print(f"model {version} targeted at agents {', '.join(agents)}")
            return 0
        group = _names(args.group, check_group_id, "group")[0]
        if not args.canary:
            targets.set("group", [group], version, args.reason)
            print(f"model {version} targeted at group {group}")
            return 0
        link, view = _connect(config, "rollout")
        try:
            canary = args.canary
            if canary == FIRST_OF_GROUP:
                _settle(link, 2.0)
                members = view.members(group)
                if not members:
                    raise ConfigError(
                        f"no agent reports group {group}",
                        hint="name the canary: --canary AGENT (or check [agent] group)",
                    )
                canary = members[0]
            canary = _names(canary, check_agent_id, "canary")[0]
            canary_rollout(view, targets, version, group, canary, args.canary_timeout)
        finally:
            link.stop()
    return 0


def clear(registry: Registry, args: argparse.Namespace) -> int:
    scope = "agent" if args.agents else "group"
    value = args.agents or args.group
    names = _names(value, check_agent_id if args.agents else check_group_id, scope)
    with TargetStore(registry.folder) as targets:
        targets.set(scope, names, None, "cleared by hand")
    print(f"cleared the model target of {scope} {', '.join(names)}")
    return 0


# -- status ------------------------------------------------------------------------------------


def fleet_rows(
    agents: dict[str, AgentStatus], targets: TargetStore, current: str | None, now: float
) -> list[dict[str, Any]]:
    """One dict per agent: what it runs, what the registry targets it with, probation."""
    rows = []
    for name, s in sorted(agents.items()):
        target, scope = targets.get("agent", name), "agent"
        if target is None and s.group:
            target, scope = targets.get("group", s.group), "group"
        if target is None:
            target, scope = current, "global"
        rows.append(
            {
                "agent": name,
                "state": s.state,
                "group": s.group,
                "version": s.model_version,
                "target": target,
                "target_scope": scope,
                "follows": s.manifest_scope,
                "follows_version": s.manifest_version,
                "probation_left": s.probation_left,
                "seen": s.time,
                "seen_ago_s": round(max(0.0, now - s.time), 1),
            }
        )
    return rows


def _probation(left: int | None) -> str:
    if left is None:
        return "?"
    return "passed" if left == 0 else f"{left} left"


def status_table(rows: list[dict[str, Any]]) -> str:
    cells = [list(STATUS_COLUMNS)]
    for r in rows:
        follows = f"{r['follows']} {r['follows_version']}" if r["follows"] else "-"
        cells.append(
            [
                r["agent"],
                r["state"],
                r["group"] or "-",
                r["version"] or "-",
                f"{r['target'] or '-'} ({r['target_scope']})",
                follows,
                _probation(r["probation_left"]),
                f"{r['seen_ago_s']:.0f}s ago",
            ]
        )
    widths = [max(len(row[i]) for row in cells) for i in range(len(STATUS_COLUMNS))]
    pad = [[c.ljust(w) for c, w in zip(row, widths, strict=True)] for row in cells]
    lines = ["  ".join(row).rstrip() for row in pad]
    return "\n".join(lines) + "\n"


def status(config: TrainerConfig, registry: Registry, args: argparse.Namespace) -> int:
    link, view = _connect(config, "status")
    try:
        _settle(link, args.wait)
        agents = view.agents()
    finally:
        link.stop()
    current = registry.current()
    with TargetStore(registry.folder) as targets:
        rows = fleet_rows(agents, targets, current.version if current else None, time.time())
        if args.json:
            out = {
                "global": current.version if current else None,
                "agents": rows,
                "targets": [t.to_dict() for t in targets.list()],
                "rollouts": targets.rollouts(5),
            }
            print(json.dumps(out, indent=2))
            return 0
        print(f"global model: {current.version if current else '-'}")
        for t in targets.list():
            print(f"target: {t.scope} {t.name} -> {t.version}")
        print(status_table(rows), end="")
    return 0

"""The trainer's and the agent's configuration for a demo run: the shipped configs' schema,
filled with the demo's broker, data, keys and quick settings (short intervals, no drift)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from dal.demo import AGENT_ID
from dal.demo.data import DemoFiles
from dal.demo.plan import DemoPlan

if TYPE_CHECKING:
    from dal.agent.config import AgentConfig
    from dal.broker import LocalBroker
    from dal.trainer.config import TrainerConfig


def trainer_config(
    out: Path,
    broker: LocalBroker,
    plan: DemoPlan,
    m0: Path,
    files: DemoFiles,
    args: argparse.Namespace,
) -> TrainerConfig:
    """The oracle labels from the pool's COCO; every new label starts a fine-tune."""
    from dal.config import from_dict
    from dal.trainer.config import TrainerConfig

    return from_dict(
        TrainerConfig,
        {
            "trainer": {
                "id": "trainer",
                "data_dir": str(out / "trainer"),
                "status_interval_s": 2.0,
            },
            "mqtt": {"host": broker.host, "port": broker.port, "protocol": broker.protocol},
            "labels": {"oracle": str(files.pool_json)},
            "finetune": {
                "auto": True,
                "min_new_labels": 1,
                "settle_s": 2.0,
                "val": str(files.val_json),
                "tolerance": args.tolerance,
                "relative_tolerance": args.relative_tolerance,
                "device": args.device,
                "epochs": plan.cycle_epochs,
                "min_steps": plan.cycle_min_steps,
                "patience": plan.cycle_epochs,
                "verify_images": 1,
                "seed": args.seed,
            },
            "models": {
                "initial_checkpoint": str(m0),
                "private_key": str(files.private_key),
                "public_key": str(files.public_key),
            },
        },
        "demo trainer config",
    )


def agent_config(
    out: Path, broker: LocalBroker, model: Path, files: DemoFiles, args: argparse.Namespace
) -> AgentConfig:
    """A folder source replaying the pool once, fast; the query of the command line."""
    from dal.agent.config import AgentConfig
    from dal.config import from_dict

    return from_dict(
        AgentConfig,
        {
            "agent": {"id": AGENT_ID, "data_dir": str(out / "agent")},
            "source": {
                "kind": "folder",
                "uri": str(files.pool_dir),
                "realtime": False,
                "loop": False,
                "folder": {"annotations": str(files.pool_json), "interval_s": 0.5},
            },
            "detector": {"model": str(model), "providers": ["CPUExecutionProvider"]},
            "policy": {"min_interval_s": 0.0, "dedup_window": 0},
            "drift": {"enabled": False},
            "pool": {"min_free_bytes": 0},
            "query": {"strategy": args.strategy, "k": args.k, "beta": 2.0, "seed": args.seed},
            "cycle": {"pool_growth": 0, "min_pool": args.k, "on_drift": False},
            "mqtt": {"host": broker.host, "port": broker.port, "protocol": broker.protocol},
            "link": {
                "ack_timeout_s": 15.0,
                "retry_max_s": 2.0,
                "status_interval_s": 2.0,
                "metrics_interval_s": 5.0,
            },
            "update": {
                "public_key": str(files.public_key),
                "smoke_images": 2,
                "max_latency_s": 30.0,
                "probation_frames": 0,
            },
            "supervisor": {"stall_s": 600.0},
        },
        "demo agent config",
    )

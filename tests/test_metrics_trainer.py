"""The trainer service's /metrics over real HTTP while real transfers arrive over mosquitto;
off by default (nothing listens); a taken port makes `dal trainer serve` exit 78."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from broker import Broker, wait_until
from metrics_scrape import (
    family_types,
    free_port,
    listening,
    refused,
    sample_names,
    scrape,
)
from PIL import Image
from trainer_samples import sample_header

from dal import config as cfg
from dal.link import AckWaiter, AgentStatus, Link, TransferSender, agent_will
from dal.trainer import metrics as trainer_metrics
from dal.trainer.config import TrainerConfig
from dal.trainer.service import TrainerService

pytestmark = pytest.mark.timeout(120)


def trainer_config(data: Path, port: int, metrics: dict[str, Any]) -> TrainerConfig:
    tables = {
        "trainer": {"data_dir": str(data), "status_interval_s": 1.0},
        "mqtt": {"port": port},
        "finetune": {"auto": False},
        "metrics": metrics,
    }
    return cfg.from_dict(TrainerConfig, tables, source="<test>")


def jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG")
    return out.getvalue()


def test_trainer_counts_ingested_samples_and_the_agents_models(
    tmp_path: Path, broker: Broker, make_link: Any
) -> None:
    port = free_port()
    config = trainer_config(tmp_path / "data", broker.port, {"enabled": True, "port": port})
    service = TrainerService(config).start(wait_connected_s=10)
    try:
        agent: Link = make_link("cam1", will=agent_will("cam1"))
        status = AgentStatus(agent="cam1", state="online", time=time.time(), model_version="m7")
        agent.publish(agent.topic("agent_status", "cam1"), status, retain=True)
        sender = TransferSender(agent, "cam1", AckWaiter(agent, "cam1"))
        data = jpeg(0)
        assert sender.ship(sample_header(data), data, ack_timeout_s=10).status == "stored"
        wait_until(lambda: service.store.agents()[0]["status"], 10, "the agent's status")
        first = scrape(port)
        for seed in range(1, 4):
            data = jpeg(seed)
            assert sender.ship(sample_header(data), data, ack_timeout_s=10).status == "stored"
        second = scrape(port)
        assert listening(os.getpid()) == {("127.0.0.1", port)}
    finally:
        service.stop()
    assert refused(port), "the endpoint outlived the service"

    assert first.value("dal_trainer_samples_ingested_total") == 1
    assert second.value("dal_trainer_samples_ingested_total") == 4
    assert second.types["dal_trainer_samples_ingested"] == "counter"
    assert second.value("dal_trainer_samples") == 4
    assert second.value("dal_trainer_samples_unlabelled") == 4
    assert second.value("dal_trainer_samples_labelled") == 0
    assert second.value("dal_trainer_agent_samples_total", agent_id="cam1") == 4
    assert second.value("dal_trainer_agent_model_info", agent_id="cam1", version="m7") == 1
    assert second.value("dal_trainer_agent_online", agent_id="cam1") == 1
    assert second.value("dal_trainer_broker_connected") == 1
    assert second.value("dal_trainer_jobs_running") == 0
    outcomes = {lab["outcome"] for lab in second.labels_of("dal_trainer_jobs_total")}
    assert outcomes == set(trainer_metrics.JOB_OUTCOMES)
    assert second.value("dal_trainer_models", state="current") == 0  # no model yet
    described = family_types(trainer_metrics.families())
    scraped = {name for name, _, _ in second.samples if name.startswith("dal_trainer_")}
    assert scraped <= sample_names(described), scraped - sample_names(described)


def test_trainer_metrics_are_off_by_default(tmp_path: Path, broker: Broker) -> None:
    port = free_port()
    service = TrainerService(trainer_config(tmp_path / "data", broker.port, {"port": port}))
    service.start(wait_connected_s=10)
    try:
        assert listening(os.getpid()) == set() and refused(port)
    finally:
        service.stop()


def test_a_taken_port_makes_trainer_serve_exit_78(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        toml = tmp_path / "trainer.toml"
        toml.write_text(
            f'[trainer]\ndata_dir = "{tmp_path / "data"}"\n[mqtt]\nport = {free_port()}\n'
            f"[metrics]\nenabled = true\nport = {port}\n"
        )
        result = subprocess.run(
            [sys.executable, "-m", "dal.cli", "trainer", "serve", "--config", str(toml)],
            capture_output=True,
            text=True,
            timeout=90,
        )
    assert result.returncode == 78, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"dal trainer: error: [metrics] cannot listen on 127.0.0.1:{port}")
    assert "Traceback" not in result.stderr

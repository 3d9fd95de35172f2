"""`dal agent run` with [metrics]: a real process serving /metrics, scraped over HTTP while it
replays a looping recording; off by default (nothing listens); a taken port exits 78."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from agent_helpers import AGENT, Receiver, contract_model, load, recording, write_config
from broker import Broker, wait_until
from metrics_scrape import (
    Scrape,
    family_types,
    free_port,
    listening,
    refused,
    sample_names,
    scrape,
    try_scrape,
)

from dal.agent import metrics as agent_metrics
from dal.agent.daemon import AgentDaemon
from dal.link import Link

pytestmark = pytest.mark.timeout(120)


def agent_config(tmp_path: Path, port: int | None, metrics: dict[str, Any]) -> Path:
    """A looping, real-time replay (frames keep coming) with the given [metrics] table."""
    model = contract_model(tmp_path / "m1.onnx", "m1")
    overrides = {
        "source": {"loop": True, "realtime": True},
        "metrics": metrics,
    }
    return write_config(
        tmp_path, model=model, source=recording(tmp_path / "r.mkv"), port=port, overrides=overrides
    )


def start_agent(config: Path, tmp_path: Path) -> subprocess.Popen:
    log = (tmp_path / "agent.log").open("w")
    return subprocess.Popen(
        [sys.executable, "-m", "dal.cli", "agent", "run", "--config", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def stop_agent(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(10)


def captured(s: Scrape | None) -> float:
    return s.value("dal_agent_frames_captured_total", agent_id=AGENT) if s else 0.0


def test_agent_serves_growing_counters_and_its_model_on_localhost(
    tmp_path: Path, broker: Broker
) -> None:
    port = free_port()
    config = agent_config(tmp_path, broker.port, {"enabled": True, "port": port})
    proc = start_agent(config, tmp_path)
    try:
        wait_until(lambda: captured(try_scrape(port)) > 0, 60, "frames in a scrape")
        first = scrape(port)
        wait_until(lambda: captured(scrape(port)) > captured(first), 30, "more frames")
        second = scrape(port)
        assert listening(proc.pid) == {("127.0.0.1", port)}  # localhost only, nothing else
    finally:
        code = stop_agent(proc)
    log = (tmp_path / "agent.log").read_text()
    assert code == 0, log

    for name in ("frames_captured", "frames_inferred"):
        total = f"dal_agent_{name}_total"
        assert second.value(total, agent_id=AGENT) > first.value(total, agent_id=AGENT)
    assert second.types["dal_agent_frames_captured"] == "counter"
    model = second.value("dal_agent_model_info", agent_id=AGENT, version="m1")
    assert model == 1.0 and second.labels_of("dal_agent_model_info")[0]["provider"]
    assert second.value("dal_agent_broker_connected", agent_id=AGENT) == 1.0

    # every frame inference is in the histogram. The histogram is read after the counters
    # within one scrape (frames go on meanwhile), so its count is at least the counter then,
    # less one frame between the count and the observation, and at most the next counter.
    def count(s: Scrape) -> float:
        return s.value("dal_agent_inference_latency_seconds_count", agent_id=AGENT)

    def inferred(s: Scrape) -> float:
        return s.value("dal_agent_frames_inferred_total", agent_id=AGENT)

    assert count(first) >= inferred(first) - 1 and count(second) >= inferred(second) - 1
    assert 0 < count(first) <= inferred(second)
    assert second.value("dal_agent_inference_latency_seconds_sum", agent_id=AGENT) > 0
    pooled = second.value("dal_agent_pool_samples", agent_id=AGENT, state="pooled")
    assert pooled > 0 and second.value("dal_agent_pool_bytes", agent_id=AGENT) > 0
    assert second.value("dal_agent_outbox_backlog", agent_id=AGENT) == 0
    # describe() (what the dashboard test reads) names exactly what a scrape shows
    described = {**family_types(agent_metrics.families()), agent_metrics.LATENCY: "histogram"}
    scraped = {name for name, _, _ in second.samples if name.startswith("dal_agent_")}
    assert scraped <= sample_names(described), scraped - sample_names(described)
    helped = {n.removesuffix("_info") for n in second.types if not n.endswith("_created")}
    assert set(described) == {n for n in helped if n.startswith("dal_agent_")}
    assert refused(port), "the endpoint outlived the agent"


def test_metrics_are_off_by_default_and_nothing_listens(tmp_path: Path) -> None:
    port = free_port()
    config = agent_config(tmp_path, None, {"port": port})  # enabled left at its default
    status_file = tmp_path / "agent" / "status.json"

    def frames() -> int:
        try:
            return json.loads(status_file.read_text())["pipeline"]["frames"]
        except (OSError, ValueError, KeyError):
            return 0

    proc = start_agent(config, tmp_path)
    try:
        wait_until(lambda: frames() > 0, 60, "the agent processing frames")
        assert proc.poll() is None and listening(proc.pid) == set()
        assert refused(port)
    finally:
        assert stop_agent(proc) == 0, (tmp_path / "agent.log").read_text()


def test_a_taken_metrics_port_is_a_config_error_exit_78(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = agent_config(tmp_path, None, {"enabled": True, "port": port})
        result = subprocess.run(
            [sys.executable, "-m", "dal.cli", "agent", "run", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=90,
        )
    assert result.returncode == 78, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("dal agent: error: [metrics] cannot listen on 127.0.0.1:")
    assert str(port) in last and "Traceback" not in result.stderr


def test_a_cycle_and_its_shipped_samples_show_in_the_metrics(
    tmp_path: Path, broker: Broker, make_link: Callable[..., Link]
) -> None:
    port = free_port()
    model = contract_model(tmp_path / "m1.onnx", "m1")
    config = write_config(
        tmp_path,
        model=model,
        source=recording(tmp_path / "r.mkv"),
        port=broker.port,
        overrides={"metrics": {"enabled": True, "port": port}},
    )
    receiver = Receiver(make_link("trainer"), tmp_path / "trainer")
    daemon = AgentDaemon(load(config), env={}).start()
    try:
        wait_until(lambda: len(daemon.pool) == 24, 30, "24 pooled frames")
        before = scrape(port)
        daemon.request_cycle(k=4)
        receiver.wait_for(4, 30)
        wait_until(lambda: daemon.outbox.backlog() == 0, 10, "every pick acked")
        after = scrape(port)
    finally:
        daemon.stop()
    assert refused(port)

    def value(s: Scrape, name: str, **labels: str) -> float:
        return s.value(name, agent_id=AGENT, **labels)

    assert value(before, "dal_agent_cycles_total") == 0
    assert value(after, "dal_agent_cycles_total") == 1
    assert value(after, "dal_agent_events_total", kind="cycle_done") == 1
    assert value(before, "dal_agent_transfers_total", outcome="acked") == 0
    assert value(after, "dal_agent_transfers_total", outcome="acked") == 4
    assert value(after, "dal_agent_transfers_total", outcome="sent") >= 4
    assert value(after, "dal_agent_outbox_samples", status="acked") == 4
    assert value(after, "dal_agent_outbox_backlog") == 0
    assert value(after, "dal_agent_frames_kept_total") == 24
    assert value(after, "dal_agent_pool_samples", state="pooled") == 20

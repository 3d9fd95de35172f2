"""Rollouts end to end on a real mosquitto: the trainer service, real agent daemons in group
line3 running small contract models, and `dal models promote --group --canary` in this
process. The group's manifest goes out only after the canary's own status says it runs the
model with probation passed; a canary that rolls the model back, or never answers, stops it."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from agent_helpers import contract_model, load, recording, write_config
from broker import Broker, wait_until
from cli_run import run_cli
from recordings import write_kinect_mkv

from dal.agent.daemon import AgentDaemon
from dal.cli import main
from dal.link import AgentStatus, Link, build_manifest, topic
from dal.link.signing import generate_keypair, load_private_key
from dal.trainer.config import load_trainer_config
from dal.trainer.registry import ModelRecord, Registry
from dal.trainer.rollout_store import TargetStore
from dal.trainer.service import TrainerService

pytestmark = pytest.mark.timeout(240)


class Fleet:
    """A trainer config and registry with released contract models, and agent daemons."""

    def __init__(self, tmp: Path, port: int) -> None:
        self.tmp = tmp
        self.port = port
        self.config = tmp / "trainer.toml"
        data = tmp / "trainer"
        self.config.write_text(
            f'[trainer]\ndata_dir = "{data}"\nstatus_interval_s = 1.0\n'
            f"[mqtt]\nport = {port}\nchunk_kib = 64\n[finetune]\nauto = false\n"
        )
        cfg = load_trainer_config(self.config)
        keys = data / "keys"
        generate_keypair(keys / "model-signing.key", keys / "model-signing.pub")
        self.public_key = keys / "model-signing.pub"
        self.registry_dir = data / "models"
        self.key = load_private_key(keys / "model-signing.key")
        self.start_model = self.release("m1", promote=True)
        self.daemons: list[AgentDaemon] = []
        self.service = TrainerService(cfg)

    def release(self, version: str, promote: bool = False, **kw: object) -> Path:
        """A contract model registered and released (ONNX + manifest signed by the key)."""
        onnx = contract_model(self.registry_dir / f"{version}.onnx", version, **kw)
        with Registry(self.registry_dir) as registry:
            registry.add(ModelRecord(version, self.tmp / f"{version}.pt", ("washer", "bracket")))
            manifest = build_manifest(onnx, version, self.key, chunk_size=64 * 1024)
            registry.update(version, onnx=onnx, manifest=manifest)
            if promote:
                registry.promote(version)
        return onnx

    def agent(
        self,
        name: str,
        group: str | None,
        source: Path | None = None,
        policy: dict[str, float] | None = None,
    ) -> AgentDaemon:
        """A real agent daemon on a looping replay, probation of 4 frames."""
        folder = self.tmp / name
        folder.mkdir(parents=True, exist_ok=True)
        agent = {"id": name, "data_dir": str(folder / "data")}
        if group:
            agent["group"] = group
        config = write_config(
            folder,
            model=self.start_model,
            source=source or recording(folder / "rec.mkv", 12),
            port=self.port,
            overrides={
                "agent": agent,
                "source": {"loop": True, "realtime": True},
                "policy": policy or {"min_interval_s": 0.25},
                "update": {
                    "public_key": str(self.public_key),
                    "smoke_images": 1,
                    "probation_frames": 4,
                },
            },
        )
        daemon = AgentDaemon(load(config), env={}).start()
        self.daemons.append(daemon)
        return daemon

    def promote(self, *args: str) -> tuple[int, str]:
        return run_cli(["models", "promote", *args, "--config", str(self.config)])

    def stop(self) -> None:
        for daemon in self.daemons:
            daemon.stop()
        self.service.stop()


@pytest.fixture
def fleet(tmp_path: Path, broker: Broker) -> Fleet:
    made = Fleet(tmp_path, broker.port)
    made.service.start(wait_connected_s=10)
    yield made
    made.stop()


class Order:
    """Everything that arrives on the watched topics, in the broker's order."""

    def __init__(self, link: Link, agents: list[str], group: str) -> None:
        self.seen: list[tuple[str, object]] = []
        self._lock = threading.Lock()
        for name in agents:
            link.subscribe(topic("agent_status", agent=name), self._on)
        self.group_topic = topic("model_manifest_group", group=group)
        link.subscribe(self.group_topic, self._on)

    def _on(self, where: str, payload: bytes) -> None:
        with self._lock:
            if where == self.group_topic:
                item: object = json.loads(payload)["version"] if payload else None
            else:
                item = AgentStatus.from_json(payload)
            self.seen.append((where, item))

    def group_manifests(self) -> list[object]:
        with self._lock:
            return [item for where, item in self.seen if where == self.group_topic]

    def status_before_group_manifest(self, agent: str) -> AgentStatus:
        with self._lock:
            at = next(i for i, (where, _) in enumerate(self.seen) if where == self.group_topic)
            statuses = [s for _, s in self.seen[:at] if isinstance(s, AgentStatus)]
        return [s for s in statuses if s.agent == agent][-1]


def runs(daemon: AgentDaemon, version: str, timeout_s: float = 40.0) -> None:
    wait_until(lambda: daemon.models.version == version, timeout_s, f"{daemon.agent} on {version}")


def test_canary_first_then_the_group_and_status_shows_it(
    fleet: Fleet, make_link: Callable[..., Link]
) -> None:
    order = Order(make_link("watcher"), ["cam1", "cam2"], "line3")
    cam1, cam2 = fleet.agent("cam1", "line3"), fleet.agent("cam2", "line3")
    other = fleet.agent("cam3", "line4")
    fleet.release("m2", bias=2.0)
    wait_until(lambda: len(order.seen) >= 2, 20, "both statuses")

    code, out = fleet.promote("m2", "--group", "line3", "--canary", "--canary-timeout", "60")
    assert code == 0, out
    assert "canary cam1" in out and "group line3 follows" in out
    runs(cam2, "m2")
    # the group's manifest came only after cam1 said: m2 runs, probation passed
    assert order.group_manifests() == ["m2"]
    said = order.status_before_group_manifest("cam1")
    assert (said.model_version, said.probation_left) == ("m2", 0)
    assert said.group == "line3" and said.manifest_scope == "agent"
    assert other.models.version == "m1"  # line4 and the global manifest stay on m1

    wait_until(lambda: cam1.downloader.following() == ("group", "m2"), 20, "cam1 back on its group")
    code, out = run_cli(
        ["models", "status", "--json", "--wait", "1.5", "--config", str(fleet.config)]
    )
    assert code == 0
    status = json.loads(out)
    rows = {r["agent"]: r for r in status["agents"]}
    assert {n: (r["version"], r["group"]) for n, r in rows.items()} == {
        "cam1": ("m2", "line3"),
        "cam2": ("m2", "line3"),
        "cam3": ("m1", "line4"),
    }
    assert rows["cam2"]["target"] == "m2" and rows["cam2"]["target_scope"] == "group"
    assert rows["cam3"]["target"] == "m1" and rows["cam3"]["target_scope"] == "global"
    assert status["global"] == "m1" and status["rollouts"][0]["state"] == "done"
    code, out = run_cli(["models", "status", "--wait", "1", "--config", str(fleet.config)])
    assert "AGENT" in out and "line4" in out and "passed" in out
    # cam1 went m1 -> m2 once: when its own target was cleared it found line3's m2 waiting
    swaps = [e["data"]["version"] for e in cam1.recent_events if e["kind"] == "model_swapped"]
    assert swaps == ["m2"]


def flickering(path: Path) -> Path:
    """A recording whose first frame is dark and the rest bright: the smoke test passes on the
    pooled dark frame, live frames then break a model made with fail_above=150 in probation."""
    frames = [np.full((96, 160, 3), 30, np.uint8)] + [np.full((96, 160, 3), 220, np.uint8)] * 11
    return write_kinect_mkv(path, frames)


def test_a_canary_that_rolls_back_stops_the_rollout(
    fleet: Fleet, make_link: Callable[..., Link], capsys: pytest.CaptureFixture[str]
) -> None:
    order = Order(make_link("watcher"), ["cam1"], "line3")
    flicker = flickering(fleet.tmp / "flicker.mkv")
    # every frame is inferred; the bright ones look like the dark one to dedup (the feature is
    # the thumbnail minus its mean), so the pool holds only the dark first frame
    same = {"min_interval_s": 0.0, "dedup_window": 32, "dedup_threshold": 0.98}
    cam1 = fleet.agent("cam1", "line3", source=flicker, policy=same)
    cam2 = fleet.agent("cam2", "line3")
    fleet.release("m3", fail_above=150.0)
    wait_until(lambda: len(order.seen) >= 1, 20, "cam1's status")

    code, out = fleet.promote(
        "m3", "--group", "line3", "--canary", "cam1", "--canary-timeout", "60"
    )
    err = capsys.readouterr().err
    assert code == 1, out
    assert cam1.models.version == "m1" and cam2.models.version == "m1"
    kinds = [e["kind"] for e in cam1.recent_events]
    assert "model_swapped" in kinds and "model_rolled_back" in kinds
    assert "model_rolled_back" in out or "model_rolled_back" in err
    assert order.group_manifests() == []
    with TargetStore(fleet.registry_dir) as targets:
        assert targets.get("group", "line3") is None
        assert targets.get("agent", "cam1") is None  # the canary follows its group again
        assert targets.rollouts()[0]["state"] == "failed"


def test_a_canary_that_never_reports_times_out(fleet: Fleet, capsys) -> None:
    code, _ = fleet.promote("m1", "--group", "line3", "--canary", "ghost", "--canary-timeout", "1")
    assert code == 1
    assert "did not report m1 within 1 s" in capsys.readouterr().err
    code, _ = fleet.promote("m1", "--canary", "cam1")  # a canary of no group
    assert code == 1 and "--canary needs --group" in capsys.readouterr().err
    with TargetStore(fleet.registry_dir) as targets:
        assert targets.get("group", "line3") is None


def test_agent_targets_are_published_kept_across_restarts_and_cleared(
    fleet: Fleet,
    broker: Broker,
    make_link: Callable[..., Link],
    capsys: pytest.CaptureFixture[str],
) -> None:
    fleet.release("m2")
    code, out = fleet.promote("m2", "--agents", "cam7,cam8")
    assert code == 0 and "cam7, cam8" in out
    got: dict[str, bytes] = {}
    watcher = make_link("watcher")
    watcher.subscribe(topic("model_manifest_agent", agent="+"), lambda t, p: got.update({t: p}))
    cam7 = topic("model_manifest_agent", agent="cam7")
    wait_until(lambda: len(got) == 2, 10, "both agents' manifests")
    assert json.loads(got[cam7])["version"] == "m2"
    # a broker without persistence forgets retained messages; a new service has the registry
    fleet.service.stop()
    broker.restart()
    got.clear()
    fleet.service = TrainerService(load_trainer_config(fleet.config)).start(wait_connected_s=10)
    wait_until(lambda: len(got) == 2, 10, "the manifests again after both restarts")
    code, _ = run_cli(["models", "clear", "--agents", "cam7", "--config", str(fleet.config)])
    assert code == 0
    wait_until(lambda: got.get(cam7) == b"", 10, "cam7's manifest cleared")
    assert json.loads(got[topic("model_manifest_agent", agent="cam8")])["version"] == "m2"
    with Registry(fleet.registry_dir) as registry:
        actions = [h["action"] for h in registry.history("m2")]
        assert registry.current().version == "m1"  # the global model did not change
    assert actions.count("targeted") == 2 and "untargeted" in actions
    code, _ = fleet.promote("m2", "--agents", "bad/name")
    assert code == 1 and "--agents: invalid agent id 'bad/name'" in capsys.readouterr().err


def test_promote_help_lists_the_rollout_flags(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["models", "promote", "--help"])
    text = capsys.readouterr().out
    assert all(flag in text for flag in ("--agents", "--group", "--canary", "--canary-timeout"))
    for bad in ("nan", "-1", "0", "1e9"):
        with pytest.raises(SystemExit) as exited:
            main(["models", "promote", "m1", "--group", "g", "--canary", "--canary-timeout", bad])
        assert exited.value.code == 2
    assert "give seconds in (0, 86400]" in capsys.readouterr().err

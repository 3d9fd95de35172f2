"""Manifests per group and per agent on a real mosquitto: which one an agent follows, the
trainer serving every offered model, the status fields, and the broker ACL for groups."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from agent_helpers import contract_model, write_config
from broker import start_broker_for, wait_until, write_password_file
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dal.errors import LinkError
from dal.link import (
    AgentStatus,
    Link,
    LinkConfig,
    ModelDownloader,
    ModelManifest,
    ModelPublisher,
    build_manifest,
    signing,
    topics,
)

CHUNK = 4096


@pytest.fixture
def key(tmp_path: Path) -> Ed25519PrivateKey:
    signing.generate_keypair(tmp_path / "k", tmp_path / "k.pub")
    return signing.load_private_key(tmp_path / "k")


class Agent:
    """A ModelDownloader standing in for an agent: it records the models it completed."""

    def __init__(
        self, link: Link, name: str, folder: Path, key: Ed25519PrivateKey, group: str | None = None
    ) -> None:
        self.completed: list[str] = []
        self.downloader = ModelDownloader(
            link,
            name,
            folder / name,
            key.public_key(),
            on_complete=lambda m, p: self.completed.append(m.version),
            accept=lambda m: m.version not in self.completed,
            group=group,
        ).start()


def model(tmp_path: Path, key: Ed25519PrivateKey, version: str) -> tuple[Path, ModelManifest]:
    path = tmp_path / "registry" / f"{version}.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(3 * CHUNK + 100))
    return path, build_manifest(path, version, key, chunk_size=CHUNK)


def test_an_agent_follows_its_own_then_its_groups_then_the_global_manifest(
    tmp_path: Path, key: Ed25519PrivateKey, make_link: Callable[..., Link]
) -> None:
    trainer = make_link("trainer")
    publisher = ModelPublisher(trainer)
    root = trainer.config.root
    line3 = topics.topic("model_manifest_group", root, group="line3")
    line4 = topics.topic("model_manifest_group", root, group="line4")
    cam1_own = topics.topic("model_manifest_agent", root, "cam1")
    publisher.publish(*model(tmp_path, key, "g1"))
    publisher.publish_target(line3, *model(tmp_path, key, "l3"))
    publisher.publish_target(line4, *model(tmp_path, key, "l4"))

    cam1 = Agent(make_link("cam1"), "cam1", tmp_path, key, group="line3")
    cam2 = Agent(make_link("cam2"), "cam2", tmp_path, key, group="line3")
    loner = Agent(make_link("cam9"), "cam9", tmp_path, key)  # no group: the global manifest
    wait_until(lambda: cam1.completed and cam2.completed and loner.completed, 10, "downloads")
    assert cam1.completed == ["l3"] and cam2.completed == ["l3"]  # never g1, never line4's
    assert loner.completed == ["g1"]
    assert cam1.downloader.following() == ("group", "l3")
    assert loner.downloader.following() == ("global", "g1")

    # cam1's own manifest beats its group's; cam2 in the same group does not see it
    publisher.publish_target(cam1_own, *model(tmp_path, key, "c1"))
    wait_until(lambda: cam1.completed == ["l3", "c1"], 10, "cam1's own model")
    assert cam1.downloader.following() == ("agent", "c1")
    # a new global model reaches only the agent without a group
    publisher.publish(*model(tmp_path, key, "g2"))
    wait_until(lambda: loner.completed == ["g1", "g2"], 10, "the new global model")
    # cleared, cam1 falls back to its group's manifest
    publisher.withdraw_target(cam1_own)
    wait_until(lambda: cam1.downloader.following() == ("group", "l3"), 10, "back to line3")
    assert cam1.completed == ["l3", "c1"] and cam2.completed == ["l3"]
    assert publisher.stats["stale_requests"] == 0

    # a manifest that is not signed by the trusted key is refused on a group topic too
    evil = Ed25519PrivateKey.generate()
    path, bad = model(tmp_path, evil, "evil")
    publisher.publish_target(line3, path, bad)
    wait_until(lambda: cam2.downloader.following() == ("group", "evil"), 10, "the evil manifest")
    assert cam2.completed == ["l3"]
    # a malformed payload on the agent's topic is counted and changes nothing
    trainer.publish(topics.topic("model_manifest_agent", root, "cam2"), b'{"version": 1}')
    wait_until(lambda: any(cam2.downloader.link.errors().values()), 10, "the error counted")
    assert cam2.downloader.following() == ("group", "evil")


def test_status_rollout_fields_are_optional_and_bounds_checked() -> None:
    old = AgentStatus.from_json(b'{"agent": "cam1", "state": "online", "time": 1.0}')
    assert (old.group, old.manifest_scope, old.manifest_version, old.probation_left) == (
        None,
        None,
        None,
        None,
    )
    full = AgentStatus(
        agent="cam1",
        state="online",
        time=1.0,
        group="line3",
        manifest_scope="group",
        manifest_version="m2",
        probation_left=0,
    )
    assert AgentStatus.from_json(full.to_json()) == full
    base = {"agent": "cam1", "state": "online", "time": 1.0}
    for bad in (
        {"group": "line 3"},
        {"group": "a/#"},
        {"group": "x" * 65},
        {"manifest_scope": "planet"},
        {"manifest_version": "../m"},
        {"probation_left": -1},
        {"probation_left": 10**12},
        {"probation_left": True},
    ):
        with pytest.raises(LinkError):
            AgentStatus.from_json(json.dumps({**base, **bad}))


def test_acl_lets_each_agent_read_only_its_own_and_its_groups_manifest(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    users = {"trainer": "t", "cam1": "c1", "cam2": "c2", "cam3": "c3"}
    write_password_file(tmp_path / "passwd", users)
    acl = topics.mosquitto_acl(groups=topics.parse_groups(["line3=cam1,cam2", "line4=cam3"]))
    (tmp_path / "acl").write_text(acl)
    conf = "\n".join(
        [
            "listener {port} 127.0.0.1",
            "allow_anonymous false",
            f"password_file {tmp_path / 'passwd'}",
            f"acl_file {tmp_path / 'acl'}",
            "persistence false",
        ]
    )
    broker = start_broker_for(tmp_path / "broker", config=conf + "\n")
    links: list[Link] = []

    def connect(user: str) -> Link:
        cfg = LinkConfig(user, port=broker.port, username=user, password=users[user])
        links.append(Link(cfg).start(5))
        return links[-1]

    try:
        trainer = connect("trainer")
        publisher = ModelPublisher(trainer)
        for name in ("line3", "line4"):
            where = topics.topic("model_manifest_group", group=name)
            publisher.publish_target(where, *model(tmp_path, key, name))
        for name in ("cam1", "cam2"):
            where = topics.topic("model_manifest_agent", agent=name)
            publisher.publish_target(where, *model(tmp_path, key, f"own-{name}"))
        cam1 = connect("cam1")
        got: list[str] = []
        for pattern in ("dal/v1/groups/+/model/manifest", "dal/v1/agents/+/model/manifest"):
            cam1.subscribe(pattern, lambda t, p: got.append(t))
        wait_until(lambda: len(got) >= 2 and cam1.subscriptions_settled(), 5, "retained ones")
        # The broker queued the retained manifests at subscribe time: once a later publish
        # has arrived, any other group's or agent's would have come before it.
        own = topics.topic("model_manifest_agent", agent="cam1")
        publisher.publish_target(own, *model(tmp_path, key, "own-cam1-v2"))
        wait_until(lambda: len(got) >= 3, 5, "the later publish")
        assert sorted(got) == [
            "dal/v1/agents/cam1/model/manifest",
            "dal/v1/agents/cam1/model/manifest",
            "dal/v1/groups/line3/model/manifest",
        ]
        for where in (
            topics.topic("model_manifest_group", group="line3"),
            topics.topic("model_manifest_agent", agent="cam1"),
            topics.topic("model_manifest"),
        ):
            with pytest.raises(LinkError, match="refused"):
                cam1.publish(where, b"{}", retain=True)
        assert "user cam3\ntopic read dal/v1/groups/line4/model/manifest" in acl
    finally:
        for link in links:
            link.stop()
        broker.stop()


def test_acl_cli_takes_groups_and_refuses_bad_ids(capsys: pytest.CaptureFixture[str]) -> None:
    assert topics.main(["acl", "dal/v1", "--group", "line3=cam1,cam2"]) == 0
    out = capsys.readouterr().out
    assert "user cam2\ntopic read dal/v1/groups/line3/model/manifest\n" in out
    assert "pattern read dal/v1/agents/%u/model/manifest" in out
    assert topics.main(["acl", "--group", "line 3=cam1"]) == 2
    assert "invalid group id" in capsys.readouterr().err
    assert topics.main(["acl", "--group", "line3"]) == 2


@pytest.mark.parametrize("group", ["line 3", "a/b", "#", "x" * 65])
def test_an_agent_with_a_bad_group_stops_with_a_config_error(tmp_path: Path, group: str) -> None:
    model = contract_model(tmp_path / "m1.onnx", "m1")
    config = write_config(
        tmp_path, model=model, source="unused", port=None, overrides={"agent": {"group": group}}
    )
    result = subprocess.run(
        [sys.executable, "-m", "dal.cli", "agent", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 78, result.stderr  # EX_CONFIG
    assert "cannot be a group id" in result.stderr and "Traceback" not in result.stderr


def test_monitor_judges_an_agent_by_the_manifest_it_follows() -> None:
    from dal.trainer.monitor import AgentView, agent_row

    size = 10
    glob = ModelManifest("m1", "m1.onnx", size, "ab" * 32, size, 1, created=0.0)
    grouped = AgentStatus(
        agent="cam1",
        state="online",
        time=1.0,
        model_version="m2",
        group="line3",
        manifest_scope="group",
        manifest_version="m2",
    )
    assert agent_row(AgentView("cam1", grouped), glob, 2.0)[2] == "m2"
    behind = dataclasses.replace(grouped, manifest_version="m3")
    assert agent_row(AgentView("cam1", behind), glob, 2.0)[2] == "m2 (not current)"
    old = AgentStatus(agent="cam2", state="online", time=1.0, model_version="m0")
    assert agent_row(AgentView("cam2", old), glob, 2.0)[2] == "m0 (not current)"

"""Operator commands cannot hurt the agent: every parameter is bounded before it is acknowledged
or stored, a refused command still gets its command_result, and a stored setting that an older
version let through is dropped with a warning at start-up instead of crashing every cycle."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest
from agent_helpers import AGENT, Watcher, contract_model, load, recording, write_config
from broker import Broker, wait_until

from dal.agent.commands import QUERY_STATE
from dal.agent.config import resolve_path
from dal.agent.daemon import AgentDaemon
from dal.agent.outbox import Outbox
from dal.agent.pool import Pool
from dal.link import Link, topic

pytestmark = pytest.mark.timeout(120)

TWO_63 = 2**63

# (command id, raw payload, a word the refusal names)
REFUSED = [
    ("c3", '{"id":"c3","action":"set_query","time":0,"params":{"beta":1e308}}', "beta"),
    ("c4", f'{{"id":"c4","action":"set_query","time":0,"params":{{"k":{TWO_63}}}}}', "k"),
    ("c5", '{"id":"c5","action":"trigger_cycle","time":0,"params":{"k":-3}}', "k"),
    ("c6", f'{{"id":"c6","action":"trigger_cycle","time":0,"params":{{"k":{TWO_63}}}}}', "k"),
    ("c7", '{"id":"c7","action":"set_query","time":0,"params":{"beta":NaN}}', "JSON"),
    ("c8", '{"id":"c8","action":"set_query","time":0,"params":{"k":true}}', "k"),
    ("c9", '{"id":"c9","action":"explode","time":0}', "action"),
    ("c10", '{"id":"c10","action":"set_query","time":"soon"}', "time"),
    ("c11", '{"id":"c11","action":"set_query","time":0,"params":{"strategy":"x"}}', "strategy"),
    ("c12", '{"id":"c12","action":"set_query","time":0,"params":{"seed":1}}', "seed"),
]


@pytest.fixture
def config(tmp_path: Path, broker: Broker) -> Path:
    model = contract_model(tmp_path / "models" / "m1.onnx", "m1")
    return write_config(
        tmp_path, model=model, source=recording(tmp_path / "rec.mkv", 12), port=broker.port
    )


def test_out_of_range_commands_are_refused_with_a_result_and_cycles_go_on(
    config: Path, make_link: Callable[..., Link]
) -> None:
    operator = make_link("operator")
    watcher = Watcher(operator)
    cmd_topic = topic("agent_cmd", operator.config.root, AGENT)
    daemon = AgentDaemon(load(config), env={}).start()
    try:
        wait_until(lambda: len(daemon.pool) >= 12, 30.0, "12 pooled frames")
        watcher.wait_status(lambda s: s.state == "online", 10.0)
        for _, payload, _ in REFUSED:
            operator.publish(cmd_topic, payload.encode())
        operator.publish(cmd_topic, b'{"id": "c13", "action": "set_q')  # no id to answer
        for command_id, _, word in REFUSED:
            result = watcher.wait_event(
                "command_result", 10.0, lambda e, i=command_id: e.data["id"] == i
            )
            assert result.data["ok"] is False, (command_id, result.message)
            assert word in result.message, (command_id, result.message)
        assert daemon.query.beta == 2.0 and daemon.query.k == 4  # nothing changed
        operator.publish(
            cmd_topic, b'{"id":"go","action":"trigger_cycle","time":0,"params":{"k":3}}'
        )
        done = watcher.wait_event("cycle_done", 20.0)
        assert done.data["k"] == 3 and len(done.data["samples"]) == 3
        go = watcher.wait_event("command_result", 10.0, lambda e: e.data["id"] == "go")
        assert go.data["ok"] is True
        assert daemon.fatal is None
        assert all(w.alive for w in daemon.workers.values() if not w.finished)
        # every refusal but c11 (a valid message naming an unknown strategy), and c13
        assert daemon.link.errors().get(cmd_topic, 0) == len(REFUSED) - 1 + 1
    finally:
        daemon.stop()


def test_a_stored_out_of_range_setting_is_ignored_with_a_warning(
    tmp_path: Path, config: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = load(config)
    pool = Pool.from_config(resolve_path(cfg, cfg.pool.dir), cfg.pool)
    outbox = Outbox(pool.db_path, AGENT)
    # What an older version stored after set_query {"beta": 1e308}: the config of that moment
    # is the current one, so today's code would take the setting back.
    settings = {**cfg.query.to_dict(), "beta": 1e308, "k": TWO_63}
    outbox.set_state(QUERY_STATE, {"config": cfg.query.to_dict(), "settings": settings})
    outbox.close()
    pool.close()
    with caplog.at_level(logging.WARNING, logger="dal.agent.commands"):
        daemon = AgentDaemon(cfg, env={}).start()
    try:
        assert daemon.query == cfg.query
        warnings = [r.getMessage() for r in caplog.records if "saved query" in r.getMessage()]
        assert len(warnings) == 1 and "beta" in warnings[0], warnings
        wait_until(lambda: len(daemon.pool) >= 12, 30.0, "12 pooled frames")
        daemon.request_cycle()
        wait_until(lambda: daemon.cycles.cycles == 1, 20.0, "a cycle")
        assert daemon.fatal is None
    finally:
        daemon.stop()

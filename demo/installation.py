"""What a demo run leaves behind for the operator's tools: `agent.toml` and `trainer.toml` next to
its data, so that `dal agent status`, `dal models list` and `dal monitor` work on `demo-output/`
exactly as on an installation, and the commands to try printed at the end.

Why the full rendered configs and not a few lines: they double as the documented starting point
for a real installation (every key, its value in the demo and its help), and loading one gives
back the config the demo ran with.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from dal.config import render_toml
from dal.demo import say

if TYPE_CHECKING:
    from dal.agent.config import AgentConfig
    from dal.broker import LocalBroker
    from dal.trainer.config import TrainerConfig

AGENT_TOML = "agent.toml"
TRAINER_TOML = "trainer.toml"


def write_configs(
    out: Path, trainer: TrainerConfig, agent: AgentConfig, broker: LocalBroker
) -> tuple[Path, Path]:
    """Write the two configs the demo's services run with; returns (agent, trainer) paths."""
    note = (
        f"The MQTT broker below ({broker.kind} on {broker.host}:{broker.port}) is the demo's own "
        "and stops with it (unless `dal demo --keep-running`); for a real installation point "
        "[mqtt] at your broker (systemd/mosquitto-dal.conf) and see docs/agent.md, "
        "docs/trainer.md."
    )
    agent_path = out / AGENT_TOML
    trainer_path = out / TRAINER_TOML
    agent_path.write_text(render_toml(agent, title=f"Agent config written by `dal demo`. {note}"))
    trainer_path.write_text(
        render_toml(trainer, title=f"Trainer config written by `dal demo`. {note}")
    )
    return agent_path, trainer_path


def next_steps(out: Path, services_running: bool) -> list[str]:
    """The commands that look into what the run left, with the paths under `out`."""
    agent = out / AGENT_TOML
    trainer = out / TRAINER_TOML
    monitor = f"dal monitor --config {trainer}"
    return [
        f"dal agent status --config {agent}",
        f"dal models list --config {trainer}",
        monitor if services_running else f"{monitor}   (while `dal demo --keep-running` runs)",
    ]


def print_next_steps(out: Path, services_running: bool) -> None:
    say("look inside what the run left:")
    for line in next_steps(out, services_running):
        print(f"    {line}", flush=True)


def wait_until_stopped(health: Callable[[], None]) -> None:
    """Keep the services up until Ctrl-C or SIGTERM; `health` raises when the agent dies."""
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    say("services stay up (--keep-running); press Ctrl-C to stop them")
    try:
        while not stop.wait(1.0):
            health()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)

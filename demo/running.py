"""The running pieces of a networked demo in one typed place, the bounded waits on them, and
the agent's events as any MQTT client sees them."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dal.errors import DalError

if TYPE_CHECKING:
    from dal.agent.daemon import AgentDaemon
    from dal.broker import LocalBroker
    from dal.link import Event, Link
    from dal.trainer.config import TrainerConfig
    from dal.trainer.registry import ModelRecord
    from dal.trainer.service import TrainerService


class EventWatch:
    """The agent's events, as any MQTT client sees them."""

    def __init__(self, link: Link, agent: str) -> None:
        from dal.link import Event

        self.events: list[Event] = []
        self._lock = threading.Lock()
        link.subscribe_message(link.topic("agent_events", agent), Event, self._on_event)

    def _on_event(self, _topic: str, event: Event) -> None:
        with self._lock:
            self.events.append(event)

    def find(self, kind: str, where: Callable[[Event], bool] = lambda e: True) -> Event | None:
        """The latest event of `kind` that `where` accepts, or None."""
        with self._lock:
            return next((e for e in reversed(self.events) if e.kind == kind and where(e)), None)


@dataclass
class Running:
    """Everything a networked run started, for the cycles and the results to use."""

    out: Path
    broker: LocalBroker
    trainer_config: TrainerConfig
    trainer: TrainerService
    m0: ModelRecord  # the trainer's release of the base model
    link: Link  # the demo's own client: commands to the agent, its events back
    events: EventWatch
    agent: AgentDaemon

    def health(self) -> None:
        """Raise when the agent cannot go on, so a wait fails now rather than at its timeout."""
        if self.agent.fatal is not None:
            raise self.agent.fatal
        if self.agent.wait(0):
            raise DalError("demo: the agent stopped", hint="see the log above")

    def wait(self, what: str, predicate: Callable[[], Any], timeout_s: float) -> Any:
        """Poll until `predicate()` is truthy and return it; DalError naming `what` after
        `timeout_s`, or as soon as the agent is unhealthy."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = predicate()
            if value:
                return value
            self.health()
            if time.monotonic() > deadline:
                raise DalError(
                    f"demo: timed out after {timeout_s:.0f} s waiting for {what}",
                    hint="see the log lines above; rerun with --verbose for more",
                )
            time.sleep(0.25)

"""Models per group or agent, rolled out with a canary.

- `TargetSync.step()` runs on the trainer service's housekeeping tick: every target in the
  registry (trainer/rollout_store.py) is published retained on its group's or agent's manifest
  topic, and a cleared one is cleared on the broker, so a promote from the CLI takes effect
  within a second, and again after a restart.
- `FleetView` holds every agent's retained status and its model events, from the broker.
- `canary_rollout` points one agent at the model, waits until its status says it runs it with
  probation passed, then points the group at it. A rollback, a refusal or the timeout stops
  it: the group keeps its model and the canary's own target is cleared again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from dal.errors import LinkError, ModelError
from dal.link import (
    ANY_AGENT,
    AgentStatus,
    Event,
    Link,
    ModelManifest,
    ModelPublisher,
    agent_of,
    topic,
)
from dal.trainer.registry import Registry
from dal.trainer.rollout_store import Target, TargetStore

logger = logging.getLogger(__name__)

TOPIC_OF_SCOPE = {"group": "model_manifest_group", "agent": "model_manifest_agent"}
FAILED_KINDS = ("model_rolled_back", "model_refused")


def target_topic(root: str, scope: str, name: str) -> str:
    """The retained manifest topic of a group or an agent."""
    if scope == "group":
        return topic(TOPIC_OF_SCOPE[scope], root, group=name)
    return topic(TOPIC_OF_SCOPE[scope], root, name)


class TargetSync:
    """Keeps the publisher's targeted manifests equal to the registry's targets table."""

    def __init__(self, registry: Registry, targets: TargetStore, publisher: ModelPublisher):
        self.registry = registry
        self.targets = targets
        self.publisher = publisher
        self._cleared: set[str] = set()  # tombstones cleared on the broker by this process

    def step(self) -> None:
        """Publish what is targeted, then clear what was cleared: a canary whose own target
        goes must find its group's new manifest already there, not fall back to the global
        one for a moment (and download it)."""
        root = self.publisher.link.config.root
        offered = self.publisher.targets()
        rows = self.targets.list(include_cleared=True)
        for target in (t for t in rows if t.version is not None):
            where = target_topic(root, target.scope, target.name)
            self._cleared.discard(where)
            self._publish(where, target, offered.get(where))
        for target in (t for t in rows if t.version is None):
            where = target_topic(root, target.scope, target.name)
            if where in offered or where not in self._cleared:
                self.publisher.withdraw_target(where)  # LinkError: the next tick tries again
                self._cleared.add(where)
                logger.info("cleared the %s %s manifest", target.scope, target.name)

    def _publish(self, where: str, target: Target, offered: ModelManifest | None) -> None:
        record = self.registry.get(target.version or "")
        if record is None or record.onnx is None or record.manifest is None:
            logger.error(
                "%s %s: model %s is not released", target.scope, target.name, target.version
            )
            return
        if offered is not None and offered.signature == record.manifest.signature:
            return
        if not record.onnx.is_file():
            logger.error("model file %s is missing; %s not published", record.onnx, where)
            return
        try:
            self.publisher.publish_target(where, record.onnx, record.manifest)
            logger.info("published %s for %s %s", record.version, target.scope, target.name)
        except LinkError as err:  # kept: published again after the next connect
            logger.info("model %s for %s not published yet: %s", record.version, where, err)


@dataclass
class AgentSeen:
    status: AgentStatus
    received: float  # when this machine got it


class FleetView:
    """Every agent's retained status and model events, as the broker has them."""

    def __init__(self, link: Link) -> None:
        self.root = link.config.root
        self._lock = threading.Lock()
        self._agents: dict[str, AgentSeen] = {}
        self._events: list[Event] = []
        self.changed = threading.Condition(self._lock)
        link.subscribe_message(link.topic("agent_status", ANY_AGENT), AgentStatus, self._status)
        link.subscribe_message(link.topic("agent_events", ANY_AGENT), Event, self._event)

    def _status(self, topic_name: str, status: AgentStatus) -> None:
        if status.agent != agent_of(topic_name, self.root):
            raise LinkError(f"status on {topic_name} names agent {status.agent}")
        with self._lock:
            self._agents[status.agent] = AgentSeen(status, time.time())
            self.changed.notify_all()

    def _event(self, topic_name: str, event: Event) -> None:
        if event.kind not in FAILED_KINDS or event.agent != agent_of(topic_name, self.root):
            return
        with self._lock:
            self._events.append(event)
            self.changed.notify_all()

    def agents(self) -> dict[str, AgentStatus]:
        with self._lock:
            return {name: seen.status for name, seen in sorted(self._agents.items())}

    def members(self, group: str) -> list[str]:
        """Agents whose status names `group`, online ones first, each part sorted by id."""
        found = [s for s in self.agents().values() if s.group == group]
        found.sort(key=lambda s: (s.state != "online", s.agent))
        return [s.agent for s in found]

    def wait(self, check: Callable[[], str | None], timeout_s: float) -> str | None:
        """Wait until `check()` (called with the lock free) returns a verdict, or time out."""
        deadline = time.monotonic() + timeout_s
        while True:
            verdict = check()
            left = deadline - time.monotonic()
            if verdict is not None or left <= 0:
                return verdict
            with self._lock:
                self.changed.wait(min(left, 0.5))

    def failure(self, agent: str, version: str, since: float) -> Event | None:
        with self._lock:
            return next(
                (
                    e
                    for e in self._events
                    if e.agent == agent and e.data.get("version") == version and e.time >= since
                ),
                None,
            )


PASSED = "passed"


def canary_verdict(view: FleetView, agent: str, version: str, since: float) -> str | None:
    """PASSED, a failure message, or None while it is still open."""
    failed = view.failure(agent, version, since)
    if failed is not None:
        return f"canary {agent}: {failed.kind}: {failed.message or failed.data}"
    status = view.agents().get(agent)
    if status is None or status.state != "online" or status.model_version != version:
        return None
    return PASSED if status.probation_left == 0 else None


def canary_rollout(
    view: FleetView,
    targets: TargetStore,
    version: str,
    group: str,
    canary: str,
    timeout_s: float,
    say: Callable[[str], None] = print,
) -> None:
    """See the module docstring; ModelError (exit 1) when the canary does not pass."""
    rollout = targets.begin_rollout(version, group, canary)
    since = time.time() - 1.0  # agent clocks may lag this one a little
    targets.set("agent", [canary], version, f"canary of group {group}")
    say(f"canary {canary}: model {version} published to it; waiting up to {timeout_s:g} s")
    verdict = view.wait(lambda: canary_verdict(view, canary, version, since), timeout_s)
    if verdict == PASSED:
        targets.set("group", [group], version, f"canary {canary} passed")
        targets.set("agent", [canary], None, "canary passed: follows its group again")
        message = f"canary {canary} runs {version} with probation passed; group {group} follows"
        targets.finish_rollout(rollout, "done", message)
        say(message)
        return
    targets.set("agent", [canary], None, "canary failed")
    hint = "the canary's events (dal monitor) and its log say more; a later promote may try again"
    if verdict is None:
        hint = "is `dal trainer serve` running and the canary online? " + hint
        status = view.agents().get(canary)
        if status is not None and status.model_version == version and status.probation_left is None:
            verdict = f"canary {canary} runs {version} but does not report probation (old agent)"
        else:
            running = status.model_version if status else "no status seen"
            verdict = f"canary {canary} did not report {version} within {timeout_s:g} s ({running})"
    targets.finish_rollout(rollout, "failed", verdict)
    raise ModelError(f"{verdict}; group {group} was not given model {version}", hint=hint)

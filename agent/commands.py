"""Operator commands from MQTT (trigger_cycle, set_query, rescore) and the query settings in force.

The settings start from the config's [query]; set_query changes them for the next cycles. They
are saved with the config's own [query] values of that moment, so they survive a restart but
give way to an edited config file. A saved setting that no longer passes the checks (an older
version stored it) is dropped with a warning: it must not fail every cycle after every restart.

Every command gets a command_result, a refused one too: one that breaks the contract (bad JSON,
an unknown action, a value out of range) is answered with ok=false and the reason whenever its
id can still be read, then counted by the Link like any malformed message.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from dal.agent.config import QueryConfig
from dal.agent.cycle import CycleTrigger
from dal.agent.outbox import Outbox
from dal.agent.pool import Pool
from dal.agent.supervisor import EmitFn
from dal.errors import ConfigError, LinkError
from dal.link import Command

logger = logging.getLogger(__name__)

QUERY_STATE = "query"  # agent_state key


class Commands:
    """Handles `Command`s and holds the query settings; results go out as events."""

    def __init__(
        self,
        config: QueryConfig,
        *,
        pool: Pool,
        outbox: Outbox,
        trigger: CycleTrigger,
        emit: EmitFn,
        rescore: Callable[[], None],
    ) -> None:
        self.config = config
        self.pool = pool
        self.outbox = outbox
        self.trigger = trigger
        self._emit = emit
        self._rescore = rescore
        self.received = 0
        self.query = self._saved_query()
        self._handlers: dict[str, Callable[[Command], None]] = {
            "trigger_cycle": self._trigger_cycle,
            "set_query": self._set_query,
            "rescore": self._rescore_pool,
        }

    def _saved_query(self) -> QueryConfig:
        """The config's query settings, or an operator's set_query made since, while the
        config's own values stay what they were then."""
        saved = self.outbox.get_state(QUERY_STATE)
        if isinstance(saved, dict) and saved.get("config") == self.config.to_dict():
            try:
                return QueryConfig(**saved["settings"])
            except (ConfigError, TypeError) as err:
                logger.warning(
                    "ignoring saved query settings %s: %s; using the config's [query]",
                    saved.get("settings"),
                    err,
                )
        return self.config

    def set_query(self, settings: QueryConfig) -> None:
        """New strategy/k/β for the next cycles; kept across restarts (see the docstring)."""
        self.query = settings
        self.outbox.set_state(
            QUERY_STATE, {"config": self.config.to_dict(), "settings": settings.to_dict()}
        )

    def on_payload(self, topic: str, payload: bytes) -> None:
        """The Link handler of the cmd topic: decode, answer a refusal, then handle."""
        if not payload:
            return  # a cleared retained message
        try:
            command = Command.from_json(payload)
        except LinkError as err:
            self.received += 1
            command_id = Command.readable_id(payload)
            if command_id is not None:
                self.result(command_id, False, f"refused: {err}")
            raise  # the Link logs and counts it like any malformed message
        self.on_command(topic, command)

    def on_command(self, topic: str, command: Command) -> None:
        self.received += 1
        handler = self._handlers.get(command.action)
        if handler is None:  # Command.from_json already refuses unknown actions
            self.result(command.id, False, f"unknown action {command.action}")
            return
        handler(command)

    def _trigger_cycle(self, command: Command) -> None:
        try:
            self.query.changed(**command.params)  # the cycle will run with these: check now
        except ConfigError as err:
            self.result(command.id, False, str(err))
            return
        if self.pool.count() == 0:
            self.result(command.id, False, "the pool is empty")
            return
        self.trigger.request(id=command.id, **command.params)

    def _set_query(self, command: Command) -> None:
        try:
            settings = self.query.changed(**command.params)
        except ConfigError as err:
            self.result(command.id, False, str(err))
            return
        self.set_query(settings)
        self.result(command.id, True, f"query settings now {settings.to_dict()}")

    def _rescore_pool(self, command: Command) -> None:
        count = self.pool.forget_scores()
        self._rescore()
        self.result(command.id, True, f"re-scoring {count} pooled samples")

    def result(self, command_id: str, ok: bool, message: str) -> None:
        log = logger.info if ok else logger.warning
        log("command %s: %s", command_id, message)
        self._emit("command_result", message, {"id": command_id, "ok": ok, "message": message})

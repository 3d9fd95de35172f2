"""The cycle worker: re-scores the pool after a model change, then starts cycles when due.

Why one worker for both: a query must never run on scores of an old model (the paper re-scores
U with every new model before the next query), so a pending rescore always goes first and a
cycle waits for it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from dal.agent.config import QueryConfig
from dal.agent.cycle import COMMAND, DRIFT, CycleTrigger, run_cycle
from dal.agent.model_update import ModelManager
from dal.agent.outbox import Outbox
from dal.agent.pipeline import Pipeline
from dal.agent.pool import Pool
from dal.agent.supervisor import Beat, EmitFn
from dal.errors import DalError, ModelError

logger = logging.getLogger(__name__)

# Frames the old model scored keep arriving from the store worker while a pass runs, so one
# pass is not always enough; each pass only takes what the one before left, and three bound it.
RESCORE_PASSES = 3
ResultFn = Callable[[str, bool, str], None]  # (command id, ok, message)


class CycleWorker:
    """See the module docstring. `rescore_wanted` may be set by anyone (a command, start-up)."""

    def __init__(
        self,
        *,
        pool: Pool,
        outbox: Outbox,
        models: ModelManager,
        pipeline: Pipeline,
        trigger: CycleTrigger,
        query: Callable[[], QueryConfig],
        emit: EmitFn,
        command_result: ResultFn,
        stop: threading.Event,
        changed: Callable[[], None],
    ) -> None:
        self.pool = pool
        self.outbox = outbox
        self.models = models
        self.pipeline = pipeline
        self.trigger = trigger
        self._query = query
        self._emit = emit
        self._command_result = command_result
        self._stop = stop
        self._changed = changed  # status worth publishing now, samples to ship
        self.rescore_wanted = threading.Event()
        self.cycles = 0

    def loop(self, beat: Beat) -> None:
        while not self._stop.wait(0.2):
            beat()
            if self.models.changed.is_set():
                self.models.changed.clear()
                self.rescore_wanted.set()
            if self.rescore_wanted.is_set():
                self.rescore_wanted.clear()
                self.rescore(beat)
            self.maybe_cycle()

    def rescore(self, beat: Beat) -> None:
        """Bring every pooled sample to the current model, before the next query."""
        version = self.models.version
        if version is None:
            return
        started = time.perf_counter()
        count = 0
        try:
            for _ in range(RESCORE_PASSES):
                done = self.pool.rescore(
                    self.pipeline.rescore_fn, version, progress=lambda done, total: beat()
                )
                count += done
                if not done:
                    break
        except ModelError as err:
            # A rollback sets `changed` and the next pass rescores with the restored model.
            logger.error("rescoring with %s stopped: %s", version, err)
            return
        if count:
            seconds = time.perf_counter() - started
            logger.info("re-scored %d pooled samples with %s in %.1f s", count, version, seconds)
            self._emit(
                "pool_rescored",
                f"{count} pooled samples re-scored with {version}",
                {"version": version, "count": count, "seconds": round(seconds, 3)},
            )
            self._changed()

    def _due(self) -> tuple[str, dict[str, Any]] | None:
        if self.models.changed.is_set() or self.rescore_wanted.is_set():
            return None  # a new model: the pool is re-scored before the next query
        drift = self.pipeline.drifting()
        if self.trigger.check(1 << 62, drift=drift) is None:
            return None  # nothing due even with a huge pool: skip counting it
        return self.trigger.check(self.pool.count(), drift=drift)

    def maybe_cycle(self) -> None:
        due = self._due()
        if due is None:
            return
        reason, params = due
        command_id = params.get("id")
        try:
            settings = self._query().changed(k=params.get("k"))
            result = run_cycle(self.pool, self.outbox, settings, reason, self.models.version or "")
        except DalError as err:
            self.trigger.done(reason)  # no tight retry loop; the next trigger tries again
            logger.error("cycle (%s) failed: %s", reason, err)
            self._emit("cycle_failed", str(err), {"reason": reason})
            if command_id:
                self._command_result(command_id, False, f"cycle failed: {err}")
            return
        self.trigger.done(reason)
        self.cycles += 1
        if reason == DRIFT:
            self.pipeline.rebase_drift()
        record = result.record
        self._emit(
            "cycle_done",
            f"cycle {record.cycle} ({reason}): {len(result.queued)} samples queued",
            {
                **record.to_dict(),
                "samples": [self.outbox.wire_id(i) for i in result.queued],
                "seconds": round(result.seconds, 3),
            },
        )
        if reason == COMMAND and command_id:
            self._command_result(
                command_id, True, f"cycle {record.cycle}: {len(result.queued)} samples queued"
            )
        self._changed()

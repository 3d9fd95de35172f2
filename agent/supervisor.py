"""Supervision of the agent's worker threads, in the manner of Frigate's watchdog.

One `Worker` dataclass per thread. `Supervisor.check()` runs every `check_s`: a crashed worker
is restarted, at most `max_restarts` times per `restart_window_s` (then `fatal` is set and the
agent stops, for systemd to restart it); a worker silent for `stall_s` is marked stalled, and
`check()` returns False so that the systemd watchdog goes hungry.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dal.agent.config import SupervisorConfig
from dal.errors import ConfigError, DalError, DependencyError

logger = logging.getLogger(__name__)

FATAL = (ConfigError, DependencyError)  # waiting or restarting will not fix these
Beat = Callable[[], None]  # a worker's heartbeat: call it at least every stall_s
EmitFn = Callable[[str, str, dict[str, Any]], None]  # (event kind, message, data)


@dataclass
class Worker:
    """One supervised thread: restarted when it crashes, watched for stalls."""

    name: str
    target: Callable[[], None]
    thread: threading.Thread | None = None
    beat: float = field(default_factory=time.monotonic)
    restarts: collections.deque[float] = field(default_factory=collections.deque)
    error: str | None = None
    fatal: DalError | None = None
    finished: bool = False  # returned by itself (a recording ended)
    stalled: bool = False

    @classmethod
    def beating(cls, name: str, loop: Callable[[Beat], None]) -> Worker:
        """A worker whose loop is handed the worker's own `touch` as its heartbeat."""
        worker = cls(name, lambda: None)
        worker.target = lambda: loop(worker.touch)
        return worker

    def start(self) -> None:
        self.beat = time.monotonic()
        self.error = None
        self.thread = threading.Thread(target=self._main, name=f"agent-{self.name}", daemon=True)
        self.thread.start()

    def _main(self) -> None:
        try:
            self.target()
            self.finished = True
        except FATAL as err:
            self.fatal = err
            logger.error("worker %s cannot go on: %s", self.name, err)
        except DalError as err:  # e.g. the camera gone for good: restarted, no traceback
            self.error = str(err)
            logger.error("worker %s failed: %s", self.name, err)
        except Exception as err:  # the one broad catch: logged, counted, restarted
            self.error = f"{type(err).__name__}: {err}"
            logger.exception("worker %s crashed", self.name)

    @property
    def alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def touch(self) -> None:
        self.beat = time.monotonic()

    def summary(self) -> dict[str, Any]:
        return {
            "alive": self.alive,
            "finished": self.finished,
            "restarts": len(self.restarts),
            "error": self.error,
            "stalled": self.stalled,
            "beat_age_s": round(time.monotonic() - self.beat, 2),
        }


class Supervisor:
    """The workers by name, their restarts and stalls; see the module docstring."""

    def __init__(self, config: SupervisorConfig, emit: EmitFn) -> None:
        self.config = config
        self._emit = emit
        self.workers: dict[str, Worker] = {}
        self.fatal: DalError | None = None

    def start(self, name: str, loop: Callable[[Beat], None]) -> Worker:
        """Run `loop(beat)` in a new supervised thread."""
        worker = Worker.beating(name, loop)
        self.workers[name] = worker
        worker.start()
        return worker

    def check(self) -> bool:
        """Restart crashed workers; False when one is stuck or the agent must stop."""
        healthy = True
        now = time.monotonic()
        for worker in list(self.workers.values()):
            if worker.fatal is not None:
                self.fatal = worker.fatal
                return False
            if not worker.alive and not worker.finished and not self._restart(worker, now):
                return False
            stalled = worker.alive and now - worker.beat > self.config.stall_s
            if stalled and not worker.stalled:
                logger.error("worker %s silent for %.0f s", worker.name, now - worker.beat)
            worker.stalled = stalled
            healthy = healthy and not stalled
        return healthy

    def _restart(self, worker: Worker, now: float) -> bool:
        """Restart a crashed worker; False (and `fatal` set) past the restart limit."""
        cfg = self.config
        while worker.restarts and now - worker.restarts[0] > cfg.restart_window_s:
            worker.restarts.popleft()
        if len(worker.restarts) >= cfg.max_restarts:
            self.fatal = DalError(
                f"worker {worker.name} crashed {len(worker.restarts) + 1} times "
                f"within {cfg.restart_window_s:g} s: {worker.error}",
                hint="see the log; systemd restarts the agent",
            )
            return False
        worker.restarts.append(now)
        logger.warning("restarting worker %s after: %s", worker.name, worker.error)
        self._emit("worker_restarted", f"{worker.name}: {worker.error}", worker.summary())
        worker.start()
        return True

    def join(self, timeout_s: float = 10.0) -> None:
        """Wait for every worker to end (after the stop event is set)."""
        for worker in list(self.workers.values()):
            if worker.thread is not None:
                worker.thread.join(timeout_s)
                if worker.thread.is_alive():
                    logger.warning("worker %s did not stop in time", worker.name)

    def summary(self) -> dict[str, dict[str, Any]]:
        return {name: w.summary() for name, w in list(self.workers.items())}

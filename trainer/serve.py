"""`dal trainer serve`: the trainer service under systemd (Type=notify): READY once the store is
open and the current model released, a watchdog ping while the service is healthy, a non-zero
exit when it stops being healthy (so systemd restarts it), a clean stop on SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import signal
import threading

from dal.notify import Notifier
from dal.trainer.config import TrainerConfig
from dal.trainer.service import TrainerService

logger = logging.getLogger(__name__)


def serve(config: TrainerConfig, stop: threading.Event | None = None) -> int:
    """`dal trainer serve`: run until SIGTERM/SIGINT (or `stop`), ping the watchdog while
    healthy, exit non-zero if the service stops being healthy (systemd restarts it)."""
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    notifier = Notifier()
    notifier.status("starting: opening the store, releasing the current model")
    service = TrainerService(config).start()
    notifier.ready()
    # ping at half systemd's watchdog period so one late beat does not get us killed
    beat = max(0.5, notifier.watchdog_s / 2) if notifier.watchdog_s else 5.0
    code = 0
    try:
        while not stop.wait(beat):
            if not service.healthy():
                logger.error("trainer service is unhealthy (a thread died or hangs); exiting")
                code = 1
                break
            notifier.watchdog()
            counts = service.store.counts()
            notifier.status(f"{counts.samples} samples, {counts.unlabelled} unlabelled")
    finally:
        notifier.stopping()
        service.stop()
        notifier.close()
    return code

"""A real mosquitto for tests and benchmarks: dal/broker.py's launcher, failing like tests want.

`Broker(workdir).start()` runs `mosquitto -c workdir/mosquitto.conf` and waits until the port
accepts connections; `kill()` is an abrupt SIGKILL (a crashed broker), `stop()` terminates then
kills, `restart()` comes back on the SAME port so clients reconnect by themselves.
"""

from __future__ import annotations

import base64
import hashlib
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from dal import broker as dal_broker
from dal.broker import default_config
from dal.broker import free_port as free_port  # re-exported for the tests
from dal.errors import LinkError

INSTALL_HINT = (
    "mosquitto is not installed: apt-get install mosquitto (the MQTT tests need a real broker)"
)


class BrokerError(RuntimeError):
    """mosquitto is missing or did not come up."""


def find_mosquitto() -> str:
    """Path of the mosquitto binary; BrokerError saying how to install it when missing."""
    found = dal_broker.find_mosquitto()
    if found is None:
        raise BrokerError(INSTALL_HINT)
    return found


def write_password_file(path: Path, users: dict[str, str]) -> Path:
    """A mosquitto 2 password file ($7$: PBKDF2-SHA512, 101 rounds, 12-byte salt), the format
    `mosquitto_passwd` writes, so the tests do not need that tool."""
    lines = []
    for user, password in users.items():
        salt = os.urandom(12)
        digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, 101)
        lines.append(
            f"{user}:$7$101${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"
        )
    path.write_text("\n".join(lines) + "\n")
    return path


def start_broker_for(workdir: Path, extra: Iterable[str] = (), config: str | None = None) -> Broker:
    """Start a mosquitto for a test, or FAIL the test (never skip) with the install hint."""
    import pytest  # only the tests need it; the benchmark imports this module too

    try:
        return Broker(workdir, config or default_config(extra)).start()
    except BrokerError as err:
        pytest.fail(str(err), pytrace=False)


class Broker(dal_broker.MosquittoBroker):
    """dal.broker's mosquitto, found or failed the way tests want (BrokerError)."""

    def __init__(self, workdir: Path, config: str | None = None, port: int | None = None) -> None:
        super().__init__(find_mosquitto(), workdir, port, config)

    def start(self, timeout_s: float = 10.0) -> Broker:
        try:
            super().start(timeout_s)
        except LinkError as err:
            raise BrokerError(str(err)) from None
        return self

    def restart(self, kill: bool = False) -> Broker:
        super().restart(kill)
        return self

    def __enter__(self) -> Broker:
        return self.start()


# -- helpers the link tests share ----------------------------------------------------------------


def wait_until(predicate: Callable[[], object], timeout_s: float, what: str) -> None:
    """Poll `predicate` until true; fail with `what` after `timeout_s` (every wait has one)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.02)


class SampleStore:
    """The trainer's durable store reduced to a folder: one file per sample, every store counted."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.stores: Counter[str] = Counter()
        self._lock = threading.Lock()

    def _path(self, sample_id: str) -> Path:
        return self.folder / sample_id.replace(":", "_")

    def store(self, header: Any, path: Path) -> None:
        with self._lock:
            os.replace(path, self._path(header.sample_id))
            self.stores[header.sample_id] += 1

    def has(self, sample_id: str) -> bool:
        return self._path(sample_id).exists()

    def data(self, sample_id: str) -> bytes:
        return self._path(sample_id).read_bytes()

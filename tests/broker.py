"""A real mosquitto for tests and benchmarks, on a free loopback port, with its own config.

`Broker(workdir).start()` runs `mosquitto -c workdir/mosquitto.conf` and waits until the port
accepts connections; `kill()` is an abrupt SIGKILL (a crashed broker), `stop()` terminates then
kills, `restart()` comes back on the SAME port so clients reconnect by themselves.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from dal.broker import HOST, free_port

INSTALL_HINT = (
    "mosquitto is not installed: apt-get install mosquitto (the MQTT tests need a real broker)"
)


class BrokerError(RuntimeError):
    """mosquitto is missing or did not come up."""


def find_mosquitto() -> str:
    """Path of the mosquitto binary; BrokerError saying how to install it when missing."""
    found = shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.access(p, os.X_OK)),
        None,
    )
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


def default_config(extra: Iterable[str] = ()) -> str:
    """Anonymous plain listener; `{port}` and `{workdir}` are filled in by Broker."""
    lines = [
        "listener {port} 127.0.0.1",
        "allow_anonymous true",
        "persistence false",
        "set_tcp_nodelay true",  # else small messages wait ~40 ms for delayed ACKs (Nagle)
        *extra,
    ]
    return "\n".join(lines) + "\n"


def start_broker_for(workdir: Path, extra: Iterable[str] = (), config: str | None = None) -> Broker:
    """Start a mosquitto for a test, or FAIL the test (never skip) with the install hint."""
    import pytest  # only the tests need it; the benchmark imports this module too

    try:
        return Broker(workdir, config or default_config(extra)).start()
    except BrokerError as err:
        pytest.fail(str(err), pytrace=False)


class Broker:
    """One mosquitto process. `config` may use the placeholders {port} and {workdir}."""

    def __init__(self, workdir: Path, config: str | None = None, port: int | None = None) -> None:
        self.binary = find_mosquitto()
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host = HOST
        self.port = port or free_port()
        self.log_path = self.workdir / "mosquitto.log"
        self.config_path = self.workdir / "mosquitto.conf"
        text = (config or default_config()).replace("{port}", str(self.port))
        text = text.replace("{workdir}", str(self.workdir))
        common = [f"log_dest file {self.log_path}", "log_type error", "log_type warning"]
        if os.geteuid() == 0:
            common.append("user root")  # else mosquitto drops to 'mosquitto' and cannot read tmp
        self.config_path.write_text(text + "\n".join(common) + "\n")
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 10.0) -> Broker:
        with open(self.workdir / "stderr.log", "ab") as stderr:
            self._proc = subprocess.Popen(
                [self.binary, "-c", str(self.config_path)],
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                code, self._proc = self._proc.returncode, None
                err = (self.workdir / "stderr.log").read_text(errors="replace")
                raise BrokerError(f"mosquitto exited with {code}: {err}\n{self.log_tail()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise BrokerError(
            f"mosquitto did not accept connections on {self.port} within {timeout_s} s"
        )

    def kill(self) -> None:
        """SIGKILL: the broker vanishes like a crash, no clean disconnects."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGKILL)
            self._proc.wait(5)
        self._proc = None

    def stop(self) -> None:
        """terminate, then kill after 5 s."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
        self._proc = None

    def restart(self, kill: bool = False) -> Broker:
        """Stop (or kill) and start again on the same port."""
        if kill:
            self.kill()
        else:
            self.stop()
        return self.start()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


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

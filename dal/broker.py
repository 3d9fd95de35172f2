"""A throwaway MQTT broker on a free loopback port, for `dal demo` on a machine without one.

mosquitto when it is installed (its own temporary config: anonymous, no persistence, loopback
only); otherwise an embedded amqtt broker (`pip install dal[demo]`) running in a thread of the
calling process. Either way `start_broker(workdir)` returns a `LocalBroker` with `host`, `port`,
`kind` and `stop()`. Not for production: a real deployment runs its own configured broker.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterable
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any

from dal.errors import DependencyError, LinkError

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
MOSQUITTO_PATHS = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


def free_port() -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def find_mosquitto() -> str | None:
    found = shutil.which("mosquitto")
    if found:
        return found
    return next((p for p in MOSQUITTO_PATHS if os.access(p, os.X_OK)), None)


def _wait_port(port: int, timeout_s: float, alive: Any) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not alive():
            return False
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


class LocalBroker:
    """What the caller needs of a started broker; `protocol` is the MQTT version to speak."""

    kind = "none"
    protocol = "5"

    def __init__(self, port: int) -> None:
        self.host = HOST
        self.port = port

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> LocalBroker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def default_config(extra: Iterable[str] = ()) -> str:
    """Anonymous plain listener on loopback; `{port}` and `{workdir}` are filled in on start."""
    lines = [
        f"listener {{port}} {HOST}",
        "allow_anonymous true",
        "persistence false",
        "set_tcp_nodelay true",  # else small messages wait ~40 ms for delayed ACKs (Nagle)
        *extra,
    ]
    return "\n".join(lines) + "\n"


class MosquittoBroker(LocalBroker):
    """A mosquitto child process with a config written into `workdir`. `config` may use the
    placeholders {port} and {workdir}; logging goes to workdir/mosquitto.log. `kill()` is an
    abrupt SIGKILL (a crashed broker), `restart()` comes back on the same port."""

    kind = "mosquitto"

    def __init__(
        self, binary: str, workdir: Path, port: int | None = None, config: str | None = None
    ) -> None:
        super().__init__(port or free_port())
        self.binary = binary
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / "mosquitto.log"
        self.config_path = self.workdir / "mosquitto.conf"
        text = (config or default_config()).replace("{port}", str(self.port))
        text = text.replace("{workdir}", str(self.workdir))
        common = [f"log_dest file {self.log_path}", "log_type error", "log_type warning"]
        if os.geteuid() == 0:
            common.append("user root")  # else it drops to 'mosquitto', who cannot read workdir
        self.config_path.write_text(text + "\n".join(common) + "\n")
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 10.0) -> MosquittoBroker:
        stderr_path = self.workdir / "stderr.log"
        with open(stderr_path, "ab") as stderr:
            self._proc = subprocess.Popen(
                [self.binary, "-c", str(self.config_path)],
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        proc = self._proc
        if not _wait_port(self.port, timeout_s, lambda: proc.poll() is None):
            code = proc.poll()
            self.stop()
            said = stderr_path.read_text(errors="replace").strip()
            raise LinkError(
                f"mosquitto did not start on {HOST}:{self.port}"
                + (f" (exit {code}: {said} {self.log_tail()})" if code is not None else ""),
                hint=f"see {stderr_path} and {self.log_path}",
            )
        return self

    def stop(self) -> None:
        """terminate, then kill after 5 s."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def kill(self) -> None:
        """SIGKILL: the broker vanishes like a crash, no clean disconnects."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(5)

    def restart(self, kill: bool = False) -> MosquittoBroker:
        """Stop (or kill) and start again on the same port: clients reconnect by themselves."""
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


class EmbeddedBroker(LocalBroker):
    """amqtt's broker on its own asyncio loop in a daemon thread of this process."""

    kind = "amqtt"
    protocol = "3.1.1"  # amqtt 0.12 speaks MQTT 3.1.1 only (an MQTT 5 CONNECT is refused)

    def __init__(self, port: int | None = None) -> None:
        super().__init__(port or free_port())
        self._loop: asyncio.AbstractEventLoop | None = None
        self._broker: Any = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def start(self, timeout_s: float = 15.0) -> EmbeddedBroker:
        try:
            import amqtt.broker  # noqa: F401  (checked here, used in the thread)
        except ImportError:
            raise DependencyError(
                "no MQTT broker: mosquitto is not installed and amqtt is missing",
                hint="apt-get install mosquitto, or pip install 'dal[demo]' (amqtt)",
            ) from None
        for name in ("amqtt", "transitions"):  # their INFO lines would drown the demo's own
            logging.getLogger(name).setLevel(logging.WARNING)
        self._thread = threading.Thread(target=self._main, name="amqtt-broker", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s) or self._error is not None:
            self.stop()
            raise LinkError(
                f"the embedded amqtt broker did not start on {HOST}:{self.port}: {self._error}",
                hint="install mosquitto, or check that the port is free",
            )
        return self

    def _config(self) -> dict[str, Any]:
        return {
            "listeners": {"default": {"type": "tcp", "bind": f"{HOST}:{self.port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
            },
        }

    def _main(self) -> None:
        from amqtt.broker import Broker

        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:

            async def make_and_start() -> Any:
                broker = Broker(self._config(), loop=loop)
                await broker.start()
                return broker

            self._broker = loop.run_until_complete(make_and_start())
        except Exception as err:  # reported to start(), which raises LinkError
            logger.exception("amqtt broker failed to start")
            self._error = err
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    def stop(self) -> None:
        loop, broker, thread = self._loop, self._broker, self._thread
        self._broker = None
        if loop is None or thread is None or not thread.is_alive():
            return
        if broker is not None:
            future = asyncio.run_coroutine_threadsafe(broker.shutdown(), loop)
            try:
                future.result(10)
            except (FutureTimeout, OSError, RuntimeError) as err:
                logger.warning("amqtt broker shutdown: %s", err)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def start_broker(workdir: Path, prefer: str = "auto") -> LocalBroker:
    """mosquitto if installed (or `prefer="mosquitto"`), else amqtt (or `prefer="amqtt"`)."""
    binary = find_mosquitto() if prefer in ("auto", "mosquitto") else None
    if binary is not None:
        return MosquittoBroker(binary, workdir).start()
    if prefer == "mosquitto":
        raise DependencyError(
            "mosquitto is not installed", hint="apt-get install mosquitto, or use --broker amqtt"
        )
    return EmbeddedBroker().start()

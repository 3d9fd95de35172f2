"""systemd's notify protocol, spoken directly: no libsystemd binding for a few datagrams.

Under `Type=notify` systemd sets `NOTIFY_SOCKET` (a path, or `@name` for the abstract
namespace) and waits for `READY=1`; with `WatchdogSec=` it also sets `WATCHDOG_USEC` (and
`WATCHDOG_PID`) and kills the service when `WATCHDOG=1` stops coming for that long. Each message
is one datagram of newline-separated `KEY=value` lines on an AF_UNIX SOCK_DGRAM socket. Outside
systemd there is no socket and every call is a cheap no-op.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

logger = logging.getLogger(__name__)


def socket_address(env: Mapping[str, str] | None = None) -> str | None:
    """Where systemd listens ('@name' = abstract namespace, a leading NUL); None if unset."""
    value = (os.environ if env is None else env).get("NOTIFY_SOCKET", "")
    if not value:
        return None
    if value.startswith("@"):
        return "\0" + value[1:]
    return value


def watchdog_interval_s(env: Mapping[str, str] | None = None) -> float | None:
    """Seconds systemd waits for WATCHDOG=1, or None when the watchdog is off (or not for us)."""
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    return int(usec) / 1e6


class Notifier:
    """Sends notifications to systemd; every method returns whether a datagram went out."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self.address = socket_address(env)
        self.watchdog_s = watchdog_interval_s(env)
        self._sock: socket.socket | None = None
        self._failed = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, **fields: str | int) -> bool:
        """One datagram of KEY=value lines, e.g. send(READY=1, STATUS="pool 12")."""
        if self.address is None or self._failed:
            return False
        lines = [f"{key}={str(value).replace(chr(10), ' ')}" for key, value in fields.items()]
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sock.setblocking(False)
            self._sock.sendto("\n".join(lines).encode("utf-8"), self.address)
        except BlockingIOError:
            return False  # systemd is busy: the next one gets through
        except OSError as err:
            # systemd gone or socket unreachable: say it once, then stay quiet.
            logger.warning("cannot notify systemd at %r: %s", self.address, err)
            self._failed = True
            return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.send(READY=1, STATUS=status) if status else self.send(READY=1)

    def status(self, text: str) -> bool:
        return self.send(STATUS=text)

    def watchdog(self) -> bool:
        return self.send(WATCHDOG=1)

    def stopping(self) -> bool:
        return self.send(STOPPING=1)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

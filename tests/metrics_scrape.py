"""Helpers of the metrics tests: a free port, a real HTTP scrape, and who listens where."""

from __future__ import annotations

import contextlib
import os
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Scrape:
    """One GET /metrics, parsed: family name -> type, and every sample."""

    types: dict[str, str]
    samples: list[tuple[str, dict[str, str], float]]

    def value(self, name: str, **labels: str) -> float:
        """The one sample called `name` whose labels include `labels`."""
        found = [v for n, lab, v in self.samples if n == name and labels.items() <= lab.items()]
        assert len(found) == 1, f"{name}{labels}: {len(found)} samples"
        return found[0]

    def labels_of(self, name: str) -> list[dict[str, str]]:
        return [lab for n, lab, _ in self.samples if n == name]


def scrape(port: int, timeout_s: float = 5.0) -> Scrape:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout_s) as reply:
        assert reply.status == 200
        text = reply.read().decode()
    types, samples = {}, []
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        samples += [(s.name, s.labels, s.value) for s in family.samples]
    return Scrape(types, samples)


def try_scrape(port: int) -> Scrape | None:
    with contextlib.suppress(urllib.error.URLError, ConnectionError, OSError):
        return scrape(port, timeout_s=2.0)
    return None


def refused(port: int) -> bool:
    """Nothing accepts connections on 127.0.0.1:port."""
    with socket.socket() as s:
        s.settimeout(2.0)
        return s.connect_ex(("127.0.0.1", port)) != 0


def listening(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket process `pid` listens on, from /proc: what a port
    check from outside cannot tell (which process, which address)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = set()
    for table in ("tcp", "tcp6"):
        with open(f"/proc/{pid}/net/{table}") as f:
            next(f)
            for line in f:
                cols = line.split()
                local, state, inode = cols[1], cols[3], cols[9]
                if state == "0A" and inode in inodes:  # 0A = LISTEN
                    address, port = local.split(":")
                    found.add((_address(address), int(port, 16)))
    return found


def _address(hex_address: str) -> str:
    if len(hex_address) == 8:  # IPv4, little-endian
        return socket.inet_ntoa(bytes.fromhex(hex_address)[::-1])
    return hex_address


SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "info": ("_info",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
}


def sample_names(families: dict[str, str]) -> set[str]:
    """The series names that families (name -> type) put on the page."""
    return {name + suffix for name, kind in families.items() for suffix in SUFFIXES[kind]}


def family_types(collector_families: dict) -> dict[str, str]:
    """name -> type of the families a module's `families()` returns."""
    return {f.name: f.type for f in collector_families.values()}

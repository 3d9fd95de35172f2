"""A fleet of agents shipping to one trainer through a broker that restarts mid-run; prints JSON.

    .venv/bin/python bench/bench_fleet.py [--agents 50] [--samples 200] [--procs 4]

It starts its own mosquitto on a free loopback port (tests/broker.py) and a real TrainerService
(SQLite sample store, synchronous FULL: an Ack means the sample is on disk). The agents run in
`--procs` worker processes (threads inside them): each agent has its own Pool and Outbox in a
folder of its own, its own Link (client id = agent id) and the agent's own Shipper. Every
agent queues `--k` samples every `--cycle-s` (as cycles would) until it has queued
`--samples`. Once half of all samples are stored the broker is restarted (SIGTERM, same port);
everyone reconnects by themselves.

Figures: samples/s (stored samples over the time from the first enqueue to the last ack),
p50/p99 of enqueue-to-durable-ack per sample (the outbox's enqueued_at to the Ack, on the
agent's clock), lost (queued, never stored by the trainer), duplicated (stored more than once),
the trainer's duplicate acks (resends it recognised), and PRAGMA integrity_check of the
trainer's store and of every agent's pool.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from broker import Broker, default_config  # noqa: E402

from dal import config as cfg  # noqa: E402
from dal.agent.outbox import ACKED, Outbox  # noqa: E402
from dal.agent.pool import Pool  # noqa: E402
from dal.agent.shipper import Shipper  # noqa: E402
from dal.link import AckWaiter, Link, LinkConfig, TransferSender  # noqa: E402

CHUNK = 64 * 1024


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--agents", type=int, default=50, help="simulated agents")
    parser.add_argument("--samples", type=int, default=200, help="samples each agent ships")
    parser.add_argument("--procs", type=int, default=4, help="worker processes for the agents")
    parser.add_argument("--k", type=int, default=10, help="samples queued per cycle")
    parser.add_argument("--cycle-s", type=float, default=1.0, help="seconds between cycles")
    parser.add_argument("--timeout-s", type=float, default=1800.0, help="give up after this")
    parser.add_argument("--worker", nargs=3, metavar=("PORT", "DIR", "IDS"), help=argparse.SUPPRESS)
    return parser


# ---- agent side (worker processes) ------------------------------------------------------------


def fill_pool(folder: Path, agent: str, n: int, seed: int) -> tuple[Pool, Outbox]:
    """A pool of n scored 160x96 JPEG frames and its outbox, as the agent keeps them."""
    pool = Pool(folder / "pool", min_free_bytes=0, max_images=n + 1)
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (96, 160, 3), dtype=np.uint8)
    for i in range(n):
        image = np.roll(base, i, axis=1)  # distinct but compressible, like camera frames
        pool.add(
            capture_time=1000.0 + i,
            source="bench",
            model_version="m1",
            score=float(rng.random()),
            feature=rng.standard_normal(256),
            detections=[],
            image=image,
            sample_id=f"s{i:05d}",
        )
    return pool, Outbox(pool.db_path, agent)


class FleetAgent:
    """One simulated agent: pool, outbox, link, shipper, and the cycles that feed it."""

    def __init__(self, agent: str, port: int, folder: Path, samples: int, seed: int) -> None:
        self.agent = agent
        self.pool, self.outbox = fill_pool(folder, agent, samples, seed)
        config = LinkConfig(agent, port=port, reconnect_min_s=0.2, reconnect_max_s=2.0)
        self.link = Link(config)
        acks = AckWaiter(self.link, agent, on_ack=lambda ack: self.shipper.settle(ack))
        self.shipper = Shipper(
            self.outbox,
            self.pool,
            TransferSender(self.link, agent, acks, window=8),
            chunk_size=CHUNK,
            ack_timeout_s=10.0,
            attempts=3,
            retry_max_s=2.0,
        )
        self.link.on_connected(self.shipper.wake.set)
        self.ids = self.pool.ids()
        self.stop = threading.Event()

    def run(self, k: int, cycle_s: float) -> None:
        self.link.start(wait_s=None)
        shipper = threading.Thread(
            target=self.shipper.loop, args=(self.stop, lambda: None), daemon=True
        )
        shipper.start()
        for start in range(0, len(self.ids), k):
            self.outbox.enqueue_cycle(
                self.ids[start : start + k],
                reason="bench",
                strategy="random",
                k=k,
                beta=1.0,
                seed=0,
                model_version="m1",
                pool_size=len(self.ids),
            )
            self.shipper.wake.set()
            if self.stop.wait(cycle_s):
                break
        while not self.stop.is_set() and self.outbox.counts()[ACKED] < len(self.ids):
            time.sleep(0.2)
        self.stop.set()
        shipper.join(15)

    def result(self) -> dict[str, Any]:
        rows = self.outbox.rows()
        latencies = [r["done_at"] - r["enqueued_at"] for r in rows if r["status"] == ACKED]
        out = {
            "agent": self.agent,
            "queued": len(rows),
            "acked": len(latencies),
            "latencies": latencies,
            "first_enqueue": min((r["enqueued_at"] for r in rows), default=None),
            "last_ack": max((r["done_at"] for r in rows if r["done_at"]), default=None),
            "wire_ids": [r["wire_id"] for r in rows],
            "integrity": self.pool.integrity_check() + self.outbox.integrity_check(),
        }
        self.link.stop()
        self.outbox.close()
        self.pool.close()
        return out


def worker(port: int, folder: Path, ids: list[str], samples: int, k: int, cycle_s: float) -> int:
    """A worker process: its agents ship everything, then one JSON line of their results."""
    agents = [
        FleetAgent(agent, port, folder / agent, samples, seed=i) for i, agent in enumerate(ids)
    ]
    print("ready", flush=True)
    sys.stdin.readline()  # go
    threads = [threading.Thread(target=a.run, args=(k, cycle_s), daemon=True) for a in agents]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(json.dumps([a.result() for a in agents]), flush=True)
    return 0


# ---- the trainer and the run (this process) ---------------------------------------------------


def start_trainer(data: Path, port: int) -> Any:
    from dal.trainer.config import TrainerConfig
    from dal.trainer.service import TrainerService

    config = cfg.from_dict(
        TrainerConfig,
        {
            "trainer": {"data_dir": str(data), "status_interval_s": 5.0},
            "mqtt": {"port": port, "chunk_kib": CHUNK // 1024},
            "finetune": {"auto": False},
        },
        source="<bench>",
    )
    return TrainerService(config).start(wait_connected_s=10.0)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return float(np.percentile(np.asarray(values), q))


def run(args: argparse.Namespace) -> dict[str, Any]:
    names = [f"fleet-a{i:03d}" for i in range(args.agents)]
    groups = [names[i :: args.procs] for i in range(args.procs) if names[i :: args.procs]]
    with tempfile.TemporaryDirectory(prefix="dal-bench-fleet-") as tmp:
        workdir = Path(tmp)
        broker = Broker(workdir / "broker", default_config([])).start()
        trainer = start_trainer(workdir / "trainer", broker.port)
        procs = []
        try:
            for group in groups:
                cmd = [sys.executable, __file__, "--worker", str(broker.port), tmp, ",".join(group)]
                cmd += ["--samples", str(args.samples), "--k", str(args.k)]
                cmd += ["--cycle-s", str(args.cycle_s)]
                procs.append(
                    subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                )
            for proc in procs:  # every pool is filled before anyone starts
                assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
            started = time.perf_counter()
            for proc in procs:
                assert proc.stdin is not None
                proc.stdin.write("go\n")
                proc.stdin.flush()
            total = args.agents * args.samples
            restarted_at = None
            while restarted_at is None and time.perf_counter() - started < args.timeout_s:
                if trainer.store.counts().samples >= total // 2:
                    broker.restart()
                    restarted_at = trainer.store.counts().samples
                time.sleep(0.2)
            results: list[dict[str, Any]] = []
            for proc in procs:
                out, _ = proc.communicate(timeout=max(10.0, args.timeout_s))
                results += json.loads(out.strip().splitlines()[-1])
            wall = time.perf_counter() - started
            stored = {s.sample_id for s in trainer.store.samples()}
            rows = len(trainer.store.samples())
            trainer_integrity = trainer.store.integrity_check()
            duplicate_acks = trainer.assembler.stats["duplicates"]
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
            trainer.stop()
            broker.stop()
    queued = [w for r in results for w in r["wire_ids"]]
    latencies = [t for r in results for t in r["latencies"]]
    first = min(r["first_enqueue"] for r in results if r["first_enqueue"] is not None)
    last = max(r["last_ack"] for r in results if r["last_ack"] is not None)
    return {
        "agents": args.agents,
        "samples_per_agent": args.samples,
        "processes": len(groups),
        "samples_stored": len(stored),
        "samples_per_s": round(len(stored) / max(last - first, 1e-9), 2),
        "wall_s": round(wall, 1),
        "enqueue_to_ack_p50_s": percentile(latencies, 50),
        "enqueue_to_ack_p99_s": percentile(latencies, 99),
        "enqueue_to_ack_mean_s": statistics.fmean(latencies) if latencies else None,
        "broker_restarted_after_samples": restarted_at,
        "lost": len(set(queued) - stored),
        "duplicated": rows - len(stored),
        "duplicate_acks": duplicate_acks,
        "integrity_check": {
            "trainer": trainer_integrity or ["ok"],
            "agents": sorted({p for r in results for p in r["integrity"]}) or ["ok"],
        },
    }


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.worker:
        port, folder, ids = args.worker
        return worker(int(port), Path(folder), ids.split(","), args.samples, args.k, args.cycle_s)
    print(json.dumps(run(args), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

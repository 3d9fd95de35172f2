"""Throughput of the MQTT link on loopback vs a plain file copy of the same bytes; prints JSON.

    .venv/bin/python bench/bench_mqtt.py [--size-mb 160] [--chunk-kib 256] [--window 8]

It starts its own mosquitto on a free port (tests/broker.py), writes SIZE random bytes to a file,
then times:
- file copy: shutil.copyfile + fsync of the copy (the floor any transfer is compared with);
- sample transfer: TransferSender.ship() of that file (agent process) until the Ack from a
  SampleReceiver in a second process that spools the chunks, checks the sha256 and stores the file;
- model download: ModelPublisher (second process) -> ModelDownloader (this process), verified
  with sha256 and an Ed25519 signature.
Agent and trainer run in separate processes as they would on two machines (no shared GIL).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from broker import Broker, default_config  # noqa: E402

from dal.link import (  # noqa: E402
    Detection,
    Link,
    LinkConfig,
    ModelDownloader,
    ModelPublisher,
    SampleHeader,
    SampleReceiver,
    TransferAssembler,
    TransferSender,
    build_manifest,
    signing,
)

AGENT = "bench-agent"
MB = 1e6


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--size-mb", type=float, default=160.0, help="payload size in MB (1e6 bytes)"
    )
    parser.add_argument("--chunk-kib", type=int, default=256, help="chunk size in KiB")
    parser.add_argument("--window", type=int, default=8, help="sender chunks in flight")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; figures are medians")
    parser.add_argument(
        "--broker-option",
        action="append",
        default=[],
        help="extra mosquitto.conf line, e.g. 'set_tcp_nodelay false' (repeatable)",
    )
    parser.add_argument(
        "--serve", nargs=4, metavar=("MODE", "PORT", "DIR", "CHUNK"), help=argparse.SUPPRESS
    )
    return parser


def link(client_id: str, port: int) -> Link:
    return Link(LinkConfig(client_id, port=port, publish_timeout_s=60)).start(10)


def serve(mode: str, port: int, workdir: Path, chunk_size: int) -> int:
    """The trainer process: receive samples, or publish the model in workdir/model.bin."""
    trainer = link(f"bench-trainer-{mode}", port)
    if mode == "receive":
        store_dir = workdir / "store"
        store_dir.mkdir(exist_ok=True)

        def store(header: SampleHeader, path: Path) -> None:
            os.replace(path, store_dir / header.sha256)

        SampleReceiver(trainer, TransferAssembler(workdir / "spool", store, lambda s: False))
    else:
        key = signing.load_private_key(workdir / "bench.key")
        manifest = build_manifest(workdir / "model.bin", "bench", key, chunk_size=chunk_size)
        ModelPublisher(trainer).publish(workdir / "model.bin", manifest)
    print("ready", flush=True)
    sys.stdin.read()  # until the parent closes our stdin
    trainer.stop()
    return 0


def start_server(mode: str, port: int, workdir: Path, chunk_size: int) -> subprocess.Popen[str]:
    cmd = [sys.executable, __file__, "--serve", mode, str(port), str(workdir), str(chunk_size)]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    if proc.stdout is None or proc.stdout.readline().strip() != "ready":
        raise RuntimeError(f"the {mode} process did not start")
    return proc


def stop_server(proc: subprocess.Popen[str]) -> None:
    if proc.stdin:
        proc.stdin.close()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
    if proc.stdout:
        proc.stdout.close()


def time_file_copy(src: Path, dst: Path) -> float:
    start = time.perf_counter()
    shutil.copyfile(src, dst)
    fd = os.open(dst, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    return time.perf_counter() - start


def time_sample_transfer(
    port: int, workdir: Path, payload: Path, chunk_size: int, window: int
) -> tuple[float, float]:
    """Seconds for ship() until the Ack, and seconds the sender spent hashing beforehand."""
    server = start_server("receive", port, workdir, chunk_size)
    try:
        agent = link(AGENT, port)
        start = time.perf_counter()
        with open(payload, "rb") as handle:
            digest = hashlib.file_digest(handle, "sha256").hexdigest()
        hashing = time.perf_counter() - start
        size = payload.stat().st_size
        header = SampleHeader(
            sample_id=f"{AGENT}:bench{time.time_ns()}",
            agent=AGENT,
            captured_at=time.time(),
            model_version="bench",
            score=1.0,
            feature=(0.0,) * 256,
            detections=(Detection(box=(0.0, 0.0, 1.0, 1.0), label=1, score=0.5),),
            sha256=digest,
            size=size,
            chunk_size=chunk_size,
            chunk_count=-(-size // chunk_size),
        )
        sender = TransferSender(agent, AGENT, window=window)
        start = time.perf_counter()
        ack = sender.ship(header, payload, ack_timeout_s=120, attempts=1)
        elapsed = time.perf_counter() - start
        if ack.status != "stored":
            raise RuntimeError(f"transfer not stored: {ack}")
        if (workdir / "store" / digest).stat().st_size != size:
            raise RuntimeError("stored file has the wrong size")
        agent.stop()
        return elapsed, hashing
    finally:
        stop_server(server)


def time_model_download(port: int, workdir: Path, payload: Path, chunk_size: int) -> float:
    shutil.copyfile(payload, workdir / "model.bin")
    signing.generate_keypair(workdir / "bench.key", workdir / "bench.pub")
    server = start_server("publish", port, workdir, chunk_size)
    done = threading.Event()
    result: list[str] = []
    try:
        agent = link(f"{AGENT}-dl", port)
        start = time.perf_counter()
        downloader = ModelDownloader(
            agent,
            AGENT,
            workdir / "models",
            signing.load_public_key(workdir / "bench.pub"),
            on_complete=lambda m, p: (result.append("ok"), done.set()),
            on_failed=lambda m, why: (result.append(why), done.set()),
            window=16,
        ).start()
        if not done.wait(600):
            raise RuntimeError("model download did not finish in 600 s")
        elapsed = time.perf_counter() - start
        downloader.stop()
        agent.stop()
        if result != ["ok"]:
            raise RuntimeError(f"model download failed: {result}")
        return elapsed
    finally:
        stop_server(server)


def one_round(
    port: int, workdir: Path, payload: Path, chunk_size: int, window: int
) -> dict[str, float]:
    """Seconds for: file copy, sample transfer (+ the sender's hashing), model download."""
    workdir.mkdir()
    copy_s = time_file_copy(payload, workdir / "copy.bin")
    (workdir / "copy.bin").unlink()
    transfer_s, hash_s = time_sample_transfer(port, workdir, payload, chunk_size, window)
    shutil.rmtree(workdir / "store")
    download_s = time_model_download(port, workdir, payload, chunk_size)
    shutil.rmtree(workdir)
    return {"copy": copy_s, "transfer": transfer_s, "hash": hash_s, "download": download_s}


def main(args: argparse.Namespace) -> int:
    if args.serve:
        mode, port, workdir, chunk = args.serve
        return serve(mode, int(port), Path(workdir), int(chunk))
    chunk_size = args.chunk_kib * 1024
    size = int(args.size_mb * MB)
    with tempfile.TemporaryDirectory(prefix="bench-mqtt-") as tmp:
        workdir = Path(tmp)
        payload = workdir / "payload.bin"
        with open(payload, "wb") as handle:
            for start in range(0, size, 1 << 24):
                handle.write(os.urandom(min(1 << 24, size - start)))
        broker = Broker(workdir / "broker", default_config(args.broker_option)).start()
        try:
            rounds = [
                one_round(broker.port, workdir / f"round{i}", payload, chunk_size, args.window)
                for i in range(args.repeat)
            ]
        finally:
            broker.stop()
        version = subprocess.run(
            [broker.binary, "-h"], capture_output=True, text=True
        ).stdout.splitlines()[0]
    # Median over rounds: the disk and the other processes on this machine make single runs noisy.
    med = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
    mb = size / MB
    result = {
        "size_mb": round(mb, 1),
        "chunk_kib": args.chunk_kib,
        "chunks": -(-size // chunk_size),
        "window": args.window,
        "rounds": args.repeat,
        "file_copy_mb_s": round(mb / med["copy"], 1),
        "sample_transfer_mb_s": round(mb / med["transfer"], 1),
        "model_download_mb_s": round(mb / med["download"], 1),
        "transfer_vs_copy": round(med["copy"] / med["transfer"], 3),
        "download_vs_copy": round(med["copy"] / med["download"], 3),
        "sender_sha256_s": round(med["hash"], 2),
        "per_round_mb_s": [
            {k: round(mb / r[k], 1) for k in ("copy", "transfer", "download")} for r in rounds
        ],
        "broker": version,
        "broker_options": ["set_tcp_nodelay true", *args.broker_option],
        "cpus": os.cpu_count(),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))

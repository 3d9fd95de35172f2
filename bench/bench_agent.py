"""Agent throughput against bare onnxruntime, same model, same recording, one run; prints JSON.

    python bench/bench_agent.py [--model m.onnx] [--frames 60] [--rounds 5] [--size 1280x720]

bare      onnxruntime's session.run alone on the frames, decoded and fitted to the model input
          beforehand: the ceiling. The session comes from agent/session.py's `open_session`,
          the very function the agent's Detector uses: same options (no spin-waiting), same
          providers, same --threads.
keep_all  the whole daemon (AgentDaemon, link off) replaying the same frames from an MKV:
          decode in the capture thread, letterbox, inference, max-margin score, drift
          statistics, keep policy, JPEG encode + fsync + SQLite commit of every frame. Every
          frame is inferred (min_interval_s = 0). Timed until the last frame is in the pool.
dedup     the same with the default near-duplicate skip (the bench's frames are alike, so
          almost none is stored).
before    keep_all as the agent was before issue 13 (store and capture at inference's priority,
          helper_nice = 0, and the old JPEG encode that copied a reversed view to swap the
          channels), for a before/after from the same run (--no-before leaves it out).

The fps ratio is agent fps / bare fps; the CPU ratio is bare CPU ms per frame / agent CPU ms per
frame (whole process: the agent's extra work shows there even when it fits in idle gaps). Each
round runs every variant, in an order that rotates from round to round, so load from other
processes hits all alike; medians and the spread over rounds are reported (goal >= 0.95).

Without --model a light MobileNetV2-FPN detector is built at 640x360 (ImageNet backbone when
installed, else random init; 100 test-time proposals) and exported, which needs torch.

cycle  one whole on-device cycle on a pool of --pool-rows samples (256-d features): read the
       candidates from SQLite, DBAL (k = 25, beta = 2), and the one transaction that queues the
       picks in the outbox. The rows are written straight into the pool table (no JPEGs).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from frames import camera_frames
from recordings import write_kinect_mkv

from dal.agent import pool as agent_pool
from dal.agent.config import AgentConfig
from dal.agent.daemon import AgentDaemon
from dal.agent.detector import Detector
from dal.agent.session import open_session
from dal.config import from_dict
from dal.letterbox import fit_image

PROVIDERS = ("CPUExecutionProvider",)
POLL_S = 0.01  # the bench's own polling: ~0.2 ms CPU per frame


def export_light_model(out: Path, proposals: int) -> Path:
    import torch

    from dal.exporter.export import ExportOptions, export_onnx
    from dal.trainer.checkpoint import Checkpoint
    from dal.trainer.detector import DetectorConfig, build_detector, resolve_backbone_weights

    try:
        weights = resolve_backbone_weights("mobilenet_v2_fpn", "imagenet")
    except Exception:  # no local ImageNet file: random init is fine for timing
        weights = None
    config = DetectorConfig(
        arch="mobilenet_v2_fpn",
        class_names=("part_a", "part_b"),
        rpn_pre_nms_top_n_test=proposals,
        rpn_post_nms_top_n_test=proposals,
        frozen_batchnorm=weights is not None,
    )
    torch.manual_seed(0)
    model = build_detector(config, weights)
    ckpt = Checkpoint(config=config, model=model.state_dict(), version="bench")
    return export_onnx(ckpt, out, ExportOptions())


def bare_fps(model: Path, frames: list[np.ndarray], threads: int) -> dict:
    """onnxruntime's session.run alone, on inputs fitted beforehand (first run: warm-up), in a
    session built exactly as the agent builds its own."""
    detector = Detector(model, providers=PROVIDERS, threads=threads, warmup=False)
    inputs = [
        fit_image(f, detector.fit_for(f.shape[1], f.shape[0]), detector.pad_value) for f in frames
    ]
    detector.close()
    session = open_session(model, PROVIDERS, threads)
    session.run(None, {"image": inputs[0]})
    started, cpu = time.perf_counter(), time.process_time()
    for x in inputs[1:]:
        session.run(None, {"image": x})
    n = len(inputs) - 1
    return {
        "fps": n / (time.perf_counter() - started),
        "cpu_ms": 1000 * (time.process_time() - cpu) / n,
    }


def _legacy_encode_jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    """The pool's JPEG encode before issue 13 (a reversed-view copy swaps the channels)."""
    ok, buf = cv2.imencode(
        ".jpg", np.ascontiguousarray(image[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    )
    assert ok
    return buf.tobytes()


def _settled(daemon: AgentDaemon, n: int) -> bool:
    """Every frame inferred and, if kept, stored (or refused) by the store worker."""
    c = daemon.counters
    return c.inferred >= n and c.kept + c.duplicates + c.pool_refused + c.storage_errors >= n


def agent_fps(model: Path, recording: Path, n: int, work: Path, variant: str, threads: int) -> dict:
    """The daemon replaying the recording; timed from its first inference until the last frame
    is through the store worker."""
    detector: dict = {"model": str(model), "providers": list(PROVIDERS), "threads": threads}
    if variant == "before":
        detector["helper_nice"] = 0
    config = from_dict(
        AgentConfig,
        {
            "agent": {"id": "bench", "data_dir": str(work)},
            "source": {"kind": "mkv", "uri": str(recording)},
            "detector": detector,
            "policy": {"min_interval_s": 0.0, "dedup_window": 32 if variant == "dedup" else 0},
            "drift": {"enabled": True, "min_samples": 10},
            "pool": {"min_free_bytes": 0},
            "cycle": {"pool_growth": 0},
            "link": {"enabled": False},
        },
    )
    encode = agent_pool.encode_jpeg
    if variant == "before":
        agent_pool.encode_jpeg = _legacy_encode_jpeg
    daemon = AgentDaemon(config, env={}).start()
    try:
        deadline = time.monotonic() + 600
        while daemon.counters.inferred < 1 and time.monotonic() < deadline:
            time.sleep(POLL_S)
        started, cpu = time.perf_counter(), time.process_time()
        while not _settled(daemon, n) and time.monotonic() < deadline:
            time.sleep(POLL_S)
        seconds = time.perf_counter() - started
        cpu_s = time.process_time() - cpu
        kept = daemon.counters.kept
    finally:
        daemon.stop()
        agent_pool.encode_jpeg = encode
    return {"fps": (n - 1) / seconds, "cpu_ms": 1000 * cpu_s / (n - 1), "kept": kept}


def bench_cycle(rows: int, work: Path) -> dict:
    """Time a full cycle (SQLite read + DBAL + outbox transaction) on a big pool."""
    from dal.agent.config import QueryConfig
    from dal.agent.cycle import run_cycle
    from dal.agent.outbox import Outbox
    from dal.agent.pool import Pool

    rng = np.random.default_rng(0)
    pool = Pool(work / "pool", min_free_bytes=0, max_images=rows + 1)
    now = time.time()
    batch = 10_000
    for start in range(0, rows, batch):
        n = min(batch, rows - start)
        features = rng.standard_normal((n, 256)).astype("<f4")
        scores = rng.random(n)
        pool.connection.execute("BEGIN")
        pool.connection.executemany(
            "INSERT INTO samples VALUES (?, ?, 'bench', 'm1', ?, ?, '[]', NULL, ?, 1000, "
            "'00', 640, 360, 'pooled', ?, ?)",
            [
                (
                    f"s{start + i:07d}",
                    now,
                    float(scores[i]),
                    features[i].tobytes(),
                    f"images/x/s{start + i:07d}.jpg",
                    now,
                    now,
                )
                for i in range(n)
            ],
        )
        pool.connection.execute("COMMIT")
    outbox = Outbox(pool.db_path, "bench")
    settings = QueryConfig("dbal", 25, 2.0)
    times = []
    for _ in range(3):
        started = time.perf_counter()
        candidates = pool.candidates()
        read_s = time.perf_counter() - started
        started = time.perf_counter()
        result = run_cycle(pool, outbox, settings, "bench", "m1")
        times.append({"read_s": read_s, "total_s": time.perf_counter() - started})
        assert len(result.queued) == 25 and len(candidates) > rows - 100
    outbox.close()
    pool.close()
    return {
        "pool_rows": rows,
        "candidates_read_s": statistics.median(t["read_s"] for t in times),
        "cycle_s": statistics.median(t["total_s"] for t in times),
        "note": "cycle_s = read the candidates + DBAL + the outbox transaction",
    }


def run_rounds(args: argparse.Namespace, model: Path, recording: Path, frames: list, tmp: Path):
    variants = ["bare", "keep_all", "dedup"] + ([] if args.no_before else ["before"])
    rounds = []
    for r in range(args.rounds):
        order = variants[r % len(variants) :] + variants[: r % len(variants)]
        got = {}
        for variant in order:
            if variant == "bare":
                got[variant] = bare_fps(model, frames, args.threads)
            else:
                work = tmp / f"{variant}{r}"
                got[variant] = agent_fps(model, recording, len(frames), work, variant, args.threads)
        bare = got["bare"]
        row = {"order": ",".join(order), "bare_fps": bare["fps"], "bare_cpu_ms": bare["cpu_ms"]}
        for variant in variants[1:]:
            run = got[variant]
            row[f"{variant}_fps"] = run["fps"]
            row[f"{variant}_cpu_ms"] = run["cpu_ms"]
            row[f"{variant}_kept"] = run["kept"]
            row[f"ratio_{variant}"] = run["fps"] / bare["fps"]
            row[f"cpu_ratio_{variant}"] = bare["cpu_ms"] / run["cpu_ms"]
        row["load_average_1m"] = os.getloadavg()[0]
        rounds.append(row)
        print(json.dumps(rounds[-1]), file=sys.stderr)
    return rounds


def _spread(rounds: list[dict]) -> dict:
    keys = [k for k, v in rounds[0].items() if isinstance(v, int | float)]
    return {
        "median": {k: statistics.median(r[k] for r in rounds) for k in keys},
        "min": {k: min(r[k] for r in rounds) for k in keys},
        "max": {k: max(r[k] for r in rounds) for k in keys},
    }


def fps_rounds(args: argparse.Namespace, tmp: Path) -> dict:
    """Agent vs bare onnxruntime on one model and recording."""
    from dal.agent.sources import MkvSource

    width, height = (int(v) for v in args.size.split("x"))
    model = args.model or export_light_model(tmp / "light.onnx", args.proposals)
    frames = camera_frames(args.frames, width, height)
    recording = write_kinect_mkv(tmp / "rec.mkv", frames, quality=3)
    with MkvSource(recording) as source:  # the very pixels the MKV source hands the agent
        decoded = [f.image for f in source]
    rounds = run_rounds(args, model, recording, decoded, tmp)
    return {
        "model": str(args.model) if args.model else f"mobilenet_v2_fpn {args.proposals} props",
        "model_mb": round(model.stat().st_size / 1e6, 1),
        "recording": f"{args.frames} frames {args.size} MJPEG",
        "threads": args.threads or "onnxruntime default",
        "rounds": rounds,
        **_spread(rounds),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, help="ONNX detector (default: export a light one)")
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="[detector] threads (both sides)")
    parser.add_argument("--no-before", action="store_true", help="leave out the before variant")
    parser.add_argument("--size", default="1280x720", help="recording size (Kinect 720p)")
    parser.add_argument("--proposals", type=int, default=100)
    parser.add_argument("--pool-rows", type=int, default=100_000, help="cycle bench (0 = skip)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    result: dict = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if args.rounds:
            result.update(fps_rounds(args, tmp))
        if args.pool_rows:
            result["cycle"] = bench_cycle(args.pool_rows, tmp / "cycle")
    result["machine"] = {
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "load_average": os.getloadavg(),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

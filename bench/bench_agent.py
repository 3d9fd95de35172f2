"""Agent throughput against bare onnxruntime, same model, same recording, one run; prints JSON.

    python bench/bench_agent.py [--model m.onnx] [--frames 40] [--rounds 3] [--size 1280x720]

bare   onnxruntime's session.run alone on the frames, decoded and fitted to the model input
       beforehand: the ceiling.
agent  the whole daemon (AgentDaemon, link off) replaying the same frames from an MKV: decode in
       the capture thread, letterbox, inference, max-margin score, drift statistics, keep
       policy, JPEG encode + fsync + SQLite commit of every kept frame. Every frame is inferred
       (min_interval_s = 0). `keep_all` pools every frame (the heaviest case); `dedup` uses the
       default near-duplicate skip.
The ratio is agent fps / bare fps; rounds alternate bare and agent so that load from other
processes hits both alike, and the median ratio is reported (goal >= 0.95). The CPU ratio
(bare CPU ms per frame / agent CPU ms per frame, whole process) is the steadier figure on a
shared machine.

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

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from recordings import write_kinect_mkv

from dal.agent.config import AgentConfig
from dal.agent.daemon import AgentDaemon
from dal.agent.detector import Detector
from dal.config import from_dict
from dal.letterbox import fit_image


def camera_frames(n: int, width: int, height: int, seed: int = 0) -> list[np.ndarray]:
    """Camera-like frames: gradients, a few parts moving, sensor noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([80 + 60 * xx / width, 90 + 50 * yy / height, np.full_like(xx, 110)], -1)
    frames = []
    for i in range(n):
        img = base.copy()
        for j in range(3):
            x = int((i * 17 + j * width // 3) % (width - width // 8))
            y = int((j * height // 4 + i * 5) % (height - height // 6))
            img[y : y + height // 6, x : x + width // 8] = (40 + 70 * j, 200 - 50 * j, 90)
        img += rng.normal(0, 4, size=img.shape)
        frames.append(np.clip(img, 0, 255).astype(np.uint8))
    return frames


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


def bare_fps(model: Path, frames: list[np.ndarray]) -> dict:
    """onnxruntime's session.run alone, on inputs fitted beforehand (first run: warm-up)."""
    import onnxruntime as ort

    detector = Detector(model, providers=("CPUExecutionProvider",), warmup=False)
    inputs = [
        fit_image(f, detector.fit_for(f.shape[1], f.shape[0]), detector.pad_value) for f in frames
    ]
    detector.close()
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    session.run(None, {"image": inputs[0]})
    started, cpu = time.perf_counter(), time.process_time()
    for x in inputs[1:]:
        session.run(None, {"image": x})
    n = len(inputs) - 1
    return {
        "fps": n / (time.perf_counter() - started),
        "cpu_ms": 1000 * (time.process_time() - cpu) / n,
    }


def agent_fps(model: Path, recording: Path, n: int, work: Path, dedup: bool) -> dict:
    """The daemon replaying the recording; fps from its first to its last inference."""
    config = from_dict(
        AgentConfig,
        {
            "agent": {"id": "bench", "data_dir": str(work)},
            "source": {"kind": "mkv", "uri": str(recording)},
            "detector": {"model": str(model), "providers": ["CPUExecutionProvider"]},
            "policy": {"min_interval_s": 0.0, "dedup_window": 32 if dedup else 0},
            "drift": {"enabled": True, "min_samples": 10},
            "pool": {"min_free_bytes": 0},
            "cycle": {"pool_growth": 0},
            "link": {"enabled": False},
        },
    )
    daemon = AgentDaemon(config, env={}).start()
    try:
        deadline = time.monotonic() + 600
        while daemon.counters.inferred < 1 and time.monotonic() < deadline:
            time.sleep(0.002)
        started, cpu = time.perf_counter(), time.process_time()
        while daemon.counters.inferred < n and time.monotonic() < deadline:
            time.sleep(0.002)
        seconds = time.perf_counter() - started
        cpu_s = time.process_time() - cpu
        kept = daemon.counters.kept
    finally:
        daemon.stop()
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
    rounds = []
    for r in range(args.rounds):
        bare = bare_fps(model, frames)
        keep_all = agent_fps(model, recording, len(frames), tmp / f"all{r}", dedup=False)
        dedup = agent_fps(model, recording, len(frames), tmp / f"dedup{r}", dedup=True)
        rounds.append(
            {
                "bare_fps": bare["fps"],
                "keep_all_fps": keep_all["fps"],
                "dedup_fps": dedup["fps"],
                "ratio_keep_all": keep_all["fps"] / bare["fps"],
                "ratio_dedup": dedup["fps"] / bare["fps"],
                # process CPU per frame: far less sensitive to other processes than wall time
                "bare_cpu_ms": bare["cpu_ms"],
                "keep_all_cpu_ms": keep_all["cpu_ms"],
                "dedup_cpu_ms": dedup["cpu_ms"],
                "cpu_ratio_keep_all": bare["cpu_ms"] / keep_all["cpu_ms"],
                "cpu_ratio_dedup": bare["cpu_ms"] / dedup["cpu_ms"],
                "keep_all_kept": keep_all["kept"],
                "dedup_kept": dedup["kept"],
            }
        )
        print(json.dumps(rounds[-1]), file=sys.stderr)
    return rounds


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
        "rounds": rounds,
        "median": {key: statistics.median(r[key] for r in rounds) for key in rounds[0]},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, help="ONNX detector (default: export a light one)")
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
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

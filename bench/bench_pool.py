"""Candidate pool throughput: inserts/s of 640x360 JPEG frames and rescore rate; prints JSON.

    python bench/bench_pool.py [--n 300] [--dir /tmp/x]

Each insert writes and fsyncs a JPEG, then commits one SQLite transaction (WAL). "encode"
includes JPEG encoding of the RGB frame, "jpeg" hands over ready bytes. The steady-state run
starts full, so every insert also evicts one sample. Rescore decodes every pooled JPEG and
writes new scores and features with a trivial scoring function: the pool's own overhead, to
which the detector's inference time adds.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from dal.agent.pool import Pool, Scored, encode_jpeg

WIDTH, HEIGHT, DIM = 640, 360, 256


def frames(n: int) -> list[np.ndarray]:
    """Camera-like frames: smooth gradients, a few parts, sensor noise (~40-60 KB as JPEG)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    out = []
    for i in range(n):
        img = np.stack(
            [80 + 60 * xx / WIDTH, 90 + 50 * yy / HEIGHT, np.full_like(xx, 100 + i % 50)], axis=-1
        )
        for _ in range(3):
            x, y = rng.integers(0, WIDTH - 80), rng.integers(0, HEIGHT - 80)
            img[y : y + 60, x : x + 70] = rng.integers(0, 255, size=3)
        img += rng.normal(0, 6, size=img.shape)
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return out


def insert_rate(
    root: Path,
    images: list[np.ndarray],
    *,
    jpeg: bool,
    sync: str,
    max_images: int,
    start: int = 0,
    rising: bool = False,
) -> float:
    """Inserts per second; `rising` scores make every insert into a full pool evict one."""
    payloads = [encode_jpeg(im) for im in images] if jpeg else images
    rng = np.random.default_rng(start)
    with Pool(root, max_images=max_images, synchronous=sync) as pool:
        started = time.perf_counter()
        for i, payload in enumerate(payloads):
            kw = {"jpeg": payload} if jpeg else {"image": payload}
            pool.add(
                capture_time=start + i,
                source="bench",
                model_version="m0",
                score=float(start + i if rising else rng.random()),
                feature=rng.normal(size=DIM).astype(np.float32),
                detections=[{"box": [1, 2, 3, 4], "label": 1, "score": 0.5}],
                **kw,
            )
        return len(payloads) / (time.perf_counter() - started)


def rescore_rate(root: Path) -> tuple[float, int]:
    def fn(rgb: np.ndarray) -> Scored:
        return Scored(float(rgb[::8, ::8].mean()) / 255, np.zeros(DIM, np.float32), [])

    with Pool(root, max_images=10**6) as pool:
        started = time.perf_counter()
        done = pool.rescore(fn, "m1", batch_size=64)
        return done / (time.perf_counter() - started), done


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300, help="frames per run")
    parser.add_argument("--dir", type=Path, default=None, help="where to put the pools")
    args = parser.parse_args()
    images = frames(args.n)
    sizes = [len(encode_jpeg(im)) for im in images[:20]]
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        base = Path(tmp)
        result = {
            "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
            "frames": args.n,
            "frame_size": f"{WIDTH}x{HEIGHT}",
            "jpeg_kb_mean": round(float(np.mean(sizes)) / 1024, 1),
            "inserts_per_s_encode_normal": insert_rate(
                base / "a", images, jpeg=False, sync="NORMAL", max_images=10**6
            ),
            "inserts_per_s_jpeg_normal": insert_rate(
                base / "b", images, jpeg=True, sync="NORMAL", max_images=10**6
            ),
            "inserts_per_s_jpeg_full": insert_rate(
                base / "c", images, jpeg=True, sync="FULL", max_images=10**6
            ),
        }
        half = max(1, args.n // 2)
        insert_rate(
            base / "d", images[:half], jpeg=True, sync="NORMAL", max_images=half, rising=True
        )
        result["inserts_per_s_jpeg_evicting"] = insert_rate(
            base / "d",
            images[half:],
            jpeg=True,
            sync="NORMAL",
            max_images=half,
            start=half,
            rising=True,
        )
        rate, done = rescore_rate(base / "b")
        result["rescore_per_s"] = rate
        result["rescored"] = done
    print(
        json.dumps(
            {k: round(v, 1) if isinstance(v, float) else v for k, v in result.items()}, indent=2
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

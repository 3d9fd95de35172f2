"""Time the query strategies on a pool the size an edge agent may hold, and the scorer.

Prints one JSON object. The goal from the design: a DBAL query (k = 25, β = 2) over 100k pooled
images with 256-d features in ≤ 1 s on the agent's CPU, so a cycle never stalls capture.

    python bench/bench_query.py [--pool 100000] [--dim 256] [--k 25] [--labelled 200]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np

from dal.scoring import image_score
from dal.strategies import STRATEGIES, Candidates


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of `repeats` calls after one warm-up (imports, thread pools)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def synthetic_pool(n: int, dim: int, seed: int = 0) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Ids, sum-of-margin-like scores and non-negative float32 GAP-like features."""
    rng = np.random.default_rng(seed)
    ids = [f"agent-01/{i:09d}" for i in rng.permutation(n)]
    scores = rng.gamma(2.0, 2.0, size=n)
    features = np.abs(rng.normal(size=(n, dim))).astype(np.float32)
    return ids, scores, features


def synthetic_probs(images: int, detections: int, columns: int, seed: int = 1) -> list[np.ndarray]:
    """Softmax rows for `images` images, float32 as onnxruntime returns them."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=3.0, size=(images, detections, columns))
    e = np.exp(logits - logits.max(axis=2, keepdims=True))
    return list((e / e.sum(axis=2, keepdims=True)).astype(np.float32))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pool", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--k", type=int, default=25)
    parser.add_argument("--beta", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--labelled", type=int, default=200, help="size of the labelled set")
    parser.add_argument("--score-images", type=int, default=10_000)
    parser.add_argument("--detections", type=int, default=20)
    parser.add_argument("--columns", type=int, default=6, help="C+1, background included")
    args = parser.parse_args()

    ids, scores, features = synthetic_pool(args.pool, args.dim)
    pool = Candidates(ids, scores, features)
    result: dict[str, object] = {
        "pool": args.pool,
        "dim": args.dim,
        "k": args.k,
        "beta": args.beta,
        "repeats": args.repeats,
        "machine": platform.machine(),
        "candidates_build_s": median_seconds(
            lambda: Candidates(ids, scores, features), args.repeats
        ),
    }
    for name, strategy in STRATEGIES.items():
        result[f"{name}_s"] = median_seconds(
            lambda s=strategy: s(pool, args.k, beta=args.beta, seed=0), args.repeats
        )
    # After a few cycles the labelled set (the paper's L) joins every query: excluded from the
    # pool, and the starting centres of core-set.
    lab_ids, lab_scores, lab_features = synthetic_pool(args.labelled, args.dim, seed=2)
    labelled = Candidates([f"labelled/{i}" for i in lab_ids], lab_scores, lab_features)
    result["labelled"] = args.labelled
    for name in ("dbal", "coreset"):
        result[f"{name}_with_labelled_s"] = median_seconds(
            lambda s=STRATEGIES[name]: s(pool, args.k, beta=args.beta, labelled=labelled),
            args.repeats,
        )
    result["dbal_goal_s"] = 1.0
    result["dbal_within_goal"] = result["dbal_s"] <= 1.0

    probs = synthetic_probs(args.score_images, args.detections, args.columns)
    seconds = median_seconds(lambda: [image_score(p) for p in probs], args.repeats)
    result["scoring"] = {
        "detections_per_image": args.detections,
        "columns": args.columns,
        "images_per_s": round(args.score_images / seconds),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

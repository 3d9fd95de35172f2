"""Camera-like test frames shared by the benches: gradients, a few moving blocks, sensor noise.

numpy only, so it also runs in the side Python that holds onnxruntime-openvino (bench_runtimes).
"""

from __future__ import annotations

import numpy as np


def camera_frames(n: int, width: int = 1280, height: int = 720, seed: int = 0) -> list[np.ndarray]:
    """`n` RGB uint8 frames of `width` x `height`, the same for the same seed."""
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

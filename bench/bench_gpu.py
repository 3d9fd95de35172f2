"""The GPU check, one command for whenever a CUDA machine is at hand; prints JSON.

    python bench/bench_gpu.py [--steps 30] [--out gpu.json]

1. Training speed: MobileNetV2-FPN (new defaults) and ResNet-50-FPN at 640x360, batch 4, the
   same preloaded procedural batches, CPU vs CUDA, steps/s and images/s.
2. AMP vs fp32 on CUDA: two copies from one initialisation trained on the same batches; the
   loss after each of --steps steps, so a bf16/fp16 run that learns worse shows.
3. `dal train --device cuda` end to end (train() on procedural data, AMP on): the checkpoint
   is device-free, loads on the CPU, and its ONNX export runs in onnxruntime with the CUDA
   provider (when installed) and the CPU provider; detections matched by IoU against torch.

Without CUDA it prints {"skipped": ...} and exits 0 (`python -m bench` runs every script); the
CPU figures live in bench_detector.py.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger("bench_gpu")
WIDTH, HEIGHT, BATCH = 640, 360, 4


def batches(root: Path, n: int) -> list:
    from dal.coco import load_coco
    from dal.procedural import make_dataset
    from dal.trainer.data import CocoDetection, collate

    coco = make_dataset(root, n * BATCH, classes=2, width=WIDTH, height=HEIGHT, seed=0)
    data = CocoDetection(load_coco(coco))
    return [collate([data[b * BATCH + i] for i in range(BATCH)]) for b in range(n)]


def model_for(arch: str):
    from dal.trainer.detector import (
        DetectorConfig,
        build_detector,
        resolve_backbone_weights,
        set_training_budget,
    )

    weights = resolve_backbone_weights(arch, "imagenet") if arch == "mobilenet_v2_fpn" else None
    config = DetectorConfig(
        arch=arch,
        class_names=("a", "b"),
        input_width=WIDTH,
        input_height=HEIGHT,
        frozen_batchnorm=weights is not None,
        rpn_on_p2=False,
    )
    torch.manual_seed(0)
    model = build_detector(config, weights)
    set_training_budget(model, 500, 64)
    return model


def train_steps(model, data, device, steps: int, dtype=None) -> tuple[list[float], list[float]]:
    """(seconds per step, loss per step); CUDA work is synchronised before each reading."""
    from dal.trainer.loop import to_device

    model = model.to(device).to(memory_format=torch.channels_last).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.005, momentum=0.9, weight_decay=1e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    times, losses = [], []
    for step in range(steps):
        images, targets = to_device(*data[step % len(data)], device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = sum(model(images, targets).values())
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        losses.append(float(loss.item()))
    return times, losses


def speed(data, steps: int) -> dict:
    out = {}
    for arch in ("mobilenet_v2_fpn", "resnet50_fpn"):
        row = {}
        for name, device, n in (
            ("cpu", torch.device("cpu"), 3),
            ("cuda", torch.device("cuda"), steps),
        ):
            times, _ = train_steps(model_for(arch), data, device, n + 1)
            median = statistics.median(times[1:])  # the first step warms up
            row[name] = {"step_s": median, "images_per_s": BATCH / median}
        row["cuda_over_cpu"] = row["cuda"]["images_per_s"] / row["cpu"]["images_per_s"]
        out[arch] = row
    return out


def amp_vs_fp32(data, steps: int) -> dict:
    base = model_for("mobilenet_v2_fpn")
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    cuda = torch.device("cuda")
    fp32_t, fp32 = train_steps(copy.deepcopy(base), data, cuda, steps)
    amp_t, amp = train_steps(copy.deepcopy(base), data, cuda, steps, dtype)
    tail = max(1, steps // 5)
    return {
        "amp_dtype": str(dtype),
        "fp32_loss": fp32,
        "amp_loss": amp,
        "fp32_last_mean": statistics.mean(fp32[-tail:]),
        "amp_last_mean": statistics.mean(amp[-tail:]),
        "amp_speedup": statistics.median(fp32_t[1:]) / statistics.median(amp_t[1:]),
    }


def end_to_end(root: Path) -> dict:
    import onnxruntime as ort

    from dal.coco import load_coco, read_image
    from dal.exporter.export import ExportOptions, export_onnx, verify
    from dal.procedural import make_dataset
    from dal.trainer.checkpoint import load_checkpoint
    from dal.trainer.train import TrainSettings, train

    train_json = make_dataset(root / "train", 32, classes=2, width=WIDTH, height=HEIGHT, seed=1)
    val_json = make_dataset(root / "val", 8, classes=2, width=WIDTH, height=HEIGHT, seed=2)
    started = time.perf_counter()
    result = train(
        TrainSettings(train=train_json, val=val_json, out=root / "run", epochs=3, device="cuda")
    )
    ckpt = load_checkpoint(result.best_path)  # map_location=cpu inside
    devices = {str(t.device) for t in ckpt.model.values()}
    onnx_path = export_onnx(ckpt, root / "model.onnx", ExportOptions())
    val = load_coco(val_json)
    images = [np.array(read_image(val.image_path(rec))) for rec in val.images[:4]]
    providers = {}
    for provider in ("CUDAExecutionProvider", "CPUExecutionProvider"):
        if provider not in ort.get_available_providers():
            providers[provider] = "not installed"
            continue
        providers[provider] = verify(ckpt, onnx_path, images, ExportOptions(), [provider])
    return {
        "train_s": time.perf_counter() - started,
        "best_ap": result.best_ap,
        "checkpoint_tensor_devices": sorted(devices),
        "precision": ckpt.training_summary.get("precision"),
        "parity": providers,
    }


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=30, help="CUDA training steps per figure")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print(json.dumps({"skipped": "torch sees no CUDA device; run this on a GPU machine"}))
        return 0
    result: dict = {
        "gpu": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "bf16": torch.cuda.is_bf16_supported(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        data = batches(Path(tmp) / "batches", 4)
        for name, step in (
            ("speed", lambda: speed(data, args.steps)),
            ("amp_vs_fp32", lambda: amp_vs_fp32(data, args.steps)),
            ("end_to_end", lambda: end_to_end(Path(tmp))),
        ):
            try:  # one failing part must not hide the others' figures
                result[name] = step()
            except Exception as err:  # reported in the JSON
                log.exception("%s failed", name)
                result[name] = {"error": f"{type(err).__name__}: {err}"}
    text = json.dumps(result, indent=2, default=str)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Detector speed on this CPU: training steps/s and single-image inference latency; prints JSON.

For each backbone at the 640x360 model input:
  training   batch 4 of procedural images, SGD; images are decoded once beforehand, so the
             figure is the model's forward + backward + step alone (decoding is timed apart)
  settings   MobileNetV2-FPN only: the training settings before 0.2 ("today": RPN on P2, 2000
             proposals, 128 RoIs, NCHW) beside the new defaults (RPN from P3, 500 proposals,
             64 RoIs, channels_last) and the fine-tuning ones (also 1 trainable backbone
             stage), timed step by step in turn so that machine load hits all alike
  --ap-minutes M   AP on real YCB-Video frames reached by "today" and "new" in M minutes of
             training each (train: scene 0001, validation: scene 0002, mustard bottle; needs
             ../shared/data/ycbv-sample)
  inference  one image through onnxruntime (CPUExecutionProvider) on the exported ONNX file,
             through the same exportable wrapper in torch eager, and through the stock
             torchvision FasterRCNN in torch eager; the three are timed round-robin so that load
             from other processes hits each of them alike

    python bench/bench_detector.py [--arch resnet50_fpn] [--steps 5] [--runs 10] [--out f.json]

ResNet-50 starts from random weights (no local ImageNet file); MobileNetV2 uses the local
ImageNet file when there is one. Random weights leave most proposals above the score threshold,
so post-processing works at its busiest: latencies are an upper bound for a trained model.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torchvision

from dal import contract
from dal.coco import load_coco, read_image
from dal.errors import DalError
from dal.exporter.export import ExportOptions, export_onnx, exportable
from dal.procedural import make_dataset
from dal.trainer.checkpoint import Checkpoint, save_checkpoint
from dal.trainer.data import CocoDetection, collate
from dal.trainer.detector import (
    ARCHITECTURES,
    DetectorConfig,
    build_detector,
    count_parameters,
    resolve_backbone_weights,
    set_trainable_layers,
    set_training_budget,
)

log = logging.getLogger("bench_detector")

WIDTH, HEIGHT = 640, 360
BATCH = 4
CLASSES = 2
SGD = {"lr": 1e-3, "momentum": 0.9, "weight_decay": 1e-4}  # small lr: random init must not diverge


def median_min(times: list[float], cpu: list[float] | None = None) -> dict[str, float]:
    """Wall-clock median and min; with `cpu`, also the median process CPU seconds, which other
    processes on the machine inflate far less than wall time (ORT's spinning threads add some)."""
    out = {"median_s": statistics.median(times), "min_s": min(times), "n": len(times)}
    if cpu is not None:
        out["cpu_median_s"] = statistics.median(cpu)
    return out


def backbone_weights(arch: str) -> Path | None:
    """MobileNetV2's ImageNet file when installed; ResNet-50 always from random weights."""
    if arch != "mobilenet_v2_fpn":
        return None
    try:
        return resolve_backbone_weights(arch, "imagenet")
    except DalError as err:
        log.warning("no ImageNet weights for %s, using random init: %s", arch, err)
        return None


def load_batches(coco_path: Path, n_batches: int) -> tuple[list, list[float]]:
    """Decode the batches once; returns them and the seconds each took to load."""
    dataset = CocoDetection(load_coco(coco_path), augment=None)
    batches, times = [], []
    for b in range(n_batches):
        start = time.perf_counter()
        batches.append(collate([dataset[b * BATCH + i] for i in range(BATCH)]))
        times.append(time.perf_counter() - start)
    return batches, times


def bench_training(model: torch.nn.Module, batches: list, warmup: int, steps: int) -> dict:
    """Time full SGD steps, cycling over the preloaded batches; warm-up steps are left out."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, **SGD)
    model.train()
    times, cpu, losses = [], [], []
    for step in range(warmup + steps):
        images, targets = batches[step % len(batches)]
        start, cpu_start = time.perf_counter(), time.process_time()
        loss = sum(model(images, targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        elapsed = time.perf_counter() - start
        losses.append(float(loss.item()))
        if step >= warmup:
            times.append(elapsed)
            cpu.append(time.process_time() - cpu_start)
        log.info("train step %d: %.2f s, loss %.3f", step, elapsed, losses[-1])
    step_s = statistics.median(times)
    return {
        "batch": BATCH,
        "warmup_steps": warmup,
        "step": median_min(times, cpu),
        "steps_per_s": 1.0 / step_s,
        "images_per_s": BATCH / step_s,
        "losses": losses,
        "optimizer": {"name": "SGD", **SGD},
        "data_loading": "excluded (batches decoded beforehand)",
    }


# name -> (RPN on P2, training proposals, RoIs per image, channels_last, trainable stages)
TRAINING_SETTINGS: dict[str, tuple[bool, int, int, bool, int]] = {
    "today": (True, 2000, 128, False, 3),
    "new": (False, 500, 64, True, 3),
    "new_finetune": (False, 500, 64, True, 1),
}


def settings_model(name: str, weights: Path | None) -> tuple[torch.nn.Module, bool]:
    on_p2, proposals, rois, channels_last, layers = TRAINING_SETTINGS[name]
    config = DetectorConfig(
        class_names=tuple(f"class{i}" for i in range(CLASSES)),
        input_width=WIDTH,
        input_height=HEIGHT,
        frozen_batchnorm=weights is not None,
        rpn_on_p2=on_p2,
    )
    torch.manual_seed(0)
    model = build_detector(config, weights)
    set_trainable_layers(model, config, layers)
    set_training_budget(model, proposals, rois)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, channels_last


def bench_settings(coco_path: Path, warmup: int, steps: int) -> dict:
    """Training images/s of each TRAINING_SETTINGS entry, their steps interleaved."""
    weights = backbone_weights("mobilenet_v2_fpn")
    batches, _ = load_batches(coco_path, 2)
    runs = {}
    for name in TRAINING_SETTINGS:
        model, _ = settings_model(name, weights)
        params = [p for p in model.parameters() if p.requires_grad]
        runs[name] = (model.train(), torch.optim.SGD(params, **SGD))
    times: dict[str, list[float]] = {name: [] for name in runs}
    for step in range(warmup + steps):
        images, targets = batches[step % len(batches)]
        for name, (model, optimizer) in runs.items():
            start = time.perf_counter()
            loss = sum(model(images, targets).values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if step >= warmup:
                times[name].append(time.perf_counter() - start)
    today = statistics.median(times["today"])
    return {
        "input_size": f"{WIDTH}x{HEIGHT}",
        "batch": BATCH,
        "settings": {
            name: dict(
                zip(("rpn_on_p2", "proposals", "rois", "channels_last", "layers"), v, strict=True)
            )
            for name, v in TRAINING_SETTINGS.items()
        },
        **{
            name: {
                "step": median_min(values),
                "images_per_s": BATCH / statistics.median(values),
                "speedup_over_today": today / statistics.median(values),
            }
            for name, values in times.items()
        },
    }


def bench_ap_at_equal_time(minutes: float, workdir: Path) -> dict:
    """AP of today's and the new settings after the same minutes of training on real frames."""
    from dal.trainer.checkpoint import load_checkpoint
    from dal.trainer.evaluate import evaluate, torch_predictor
    from dal.trainer.train import TrainSettings, train
    from dal.ycb import import_ycb

    scenes = (
        Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "ycbv-sample" / "scenes"
    )
    if not scenes.is_dir():
        raise DalError(f"{scenes}: YCB-Video sample not found", hint="--ap-minutes needs ../shared")
    split = {}
    for name, scene in (("train", "0001"), ("val", "0002")):
        split[name] = import_ycb(
            scenes, workdir / name, scenes=[scene], classes=["006_mustard_bottle"], images="symlink"
        )
    result = {"minutes": minutes, "train": "scene 0001 (20 frames)", "val": "scene 0002 (20)"}
    for name, (on_p2, proposals, rois, channels_last, layers) in TRAINING_SETTINGS.items():
        if name == "new_finetune":
            continue
        started = time.perf_counter()
        run = train(
            TrainSettings(
                train=split["train"],
                out=workdir / name,
                input_size="320x240",
                epochs=1000,
                time_budget_s=minutes * 60,
                rpn_on_p2=on_p2,
                train_proposals=proposals,
                train_rois=rois,
                channels_last=channels_last,
                trainable_layers=layers,
                device="cpu",
                progress=False,
            )
        )
        ckpt = load_checkpoint(run.best_path)
        metrics, _ = evaluate(
            torch_predictor(ckpt.build()),
            load_coco(split["val"]),
            list(ckpt.config.class_names),
            progress=False,
        )
        result[name] = {
            "AP": metrics["AP"],
            "AP50": metrics["AP50"],
            "epochs": run.epochs_run,
            "wall_s": time.perf_counter() - started,
        }
    return result


def bench_inference(ckpt: Checkpoint, onnx_path: Path, image: np.ndarray, runs: int) -> dict:
    """onnxruntime vs torch eager (wrapper and stock model) on one image, round-robin."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = os.cpu_count() or 1
    start = time.perf_counter()
    session = ort.InferenceSession(
        str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"]
    )
    session_s = time.perf_counter() - start
    wrapper = exportable(ckpt, ExportOptions())
    stock = ckpt.build().eval()
    hwc = torch.from_numpy(image)
    chw = hwc.permute(2, 0, 1).float() / 255.0
    feeds = {contract.INPUT_NAME: image}
    engines: dict[str, Callable[[], int]] = {
        "onnxruntime": lambda: len(session.run(list(contract.OUTPUT_NAMES), feeds)[0]),
        "torch_wrapper": lambda: len(wrapper(hwc)[0]),
        "torch_stock": lambda: len(stock([chw])[0]["boxes"]),
    }
    times: dict[str, list[float]] = {name: [] for name in engines}
    cpu: dict[str, list[float]] = {name: [] for name in engines}
    detections: dict[str, int] = {}
    with torch.no_grad():
        for name, fn in engines.items():  # warm-up: thread pools, allocator, ORT arenas
            detections[name] = fn()
        for _ in range(runs):
            for name, fn in engines.items():
                start, cpu_start = time.perf_counter(), time.process_time()
                fn()
                times[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - cpu_start)
    result = {
        name: {**median_min(times[name], cpu[name]), "detections": detections[name]}
        for name in engines
    }
    ratios = {
        f"{name}_over_ort{suffix}": result[name][key] / result["onnxruntime"][key]
        for name in ("torch_wrapper", "torch_stock")
        for key, suffix in (("median_s", ""), ("min_s", "_by_min"))
    }
    return {
        "session_create_s": session_s,
        "providers": session.get_providers(),
        "ort_intra_op_threads": options.intra_op_num_threads,
        **result,
        **ratios,
    }


def bench_arch(arch: str, coco_path: Path, image: np.ndarray, args: argparse.Namespace) -> dict:
    weights = backbone_weights(arch)
    config = DetectorConfig(
        arch=arch,
        class_names=tuple(f"class{i}" for i in range(CLASSES)),
        input_width=WIDTH,
        input_height=HEIGHT,
        rpn_pre_nms_top_n_test=args.proposals,
        rpn_post_nms_top_n_test=args.proposals,
        frozen_batchnorm=weights is not None,
    )
    torch.manual_seed(0)
    model = build_detector(config, weights)
    total, trainable = count_parameters(model)
    batches, load_times = load_batches(coco_path, 2)
    log.info("%s: training", arch)
    training = bench_training(model, batches, args.warmup, args.steps)
    training["batch_load"] = median_min(load_times)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Checkpoint(config=config, model=model.state_dict(), version="bench")
        save_checkpoint(ckpt, Path(tmp) / "model.pt")
        log.info("%s: exporting", arch)
        start = time.perf_counter()
        onnx_path = export_onnx(ckpt, Path(tmp) / "model.onnx", ExportOptions())
        export_s = time.perf_counter() - start
        onnx_mb = onnx_path.stat().st_size / 1e6
        log.info("%s: inference", arch)
        inference = bench_inference(ckpt, onnx_path, image, args.runs)
    return {
        "backbone_weights": str(weights) if weights is not None else None,
        "backbone_init": "imagenet" if weights is not None else "random",
        "frozen_batchnorm": config.frozen_batchnorm,
        "parameters": total,
        "trainable_parameters": trainable,
        "proposals": args.proposals,
        "training": training,
        "export_s": export_s,
        "onnx_mb": onnx_mb,
        "inference": inference,
        "load_average_after": os.getloadavg(),
    }


def machine_info() -> dict:
    return {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "onnxruntime": ort.__version__,
        "ort_available_providers": ort.get_available_providers(),
        "provider_used": "CPUExecutionProvider",
        "load_average_start": os.getloadavg(),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--arch",
        action="append",
        choices=ARCHITECTURES,
        help="backbone to time (repeatable; default: both)",
    )
    parser.add_argument("--steps", type=int, default=5, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=1, help="untimed training steps first")
    parser.add_argument("--runs", type=int, default=10, help="timed inference runs per engine")
    parser.add_argument("--proposals", type=int, default=300, help="test-time RPN proposals")
    parser.add_argument(
        "--ap-minutes",
        type=float,
        default=0.0,
        help="also train today's and the new settings this long each on real YCB-Video frames "
        "and report AP (needs ../shared; 0: skip)",
    )
    parser.add_argument("--out", type=Path, help="also write the JSON to this file")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.runs < 1 or args.warmup < 0 or args.proposals < 1:
        parser.error("--steps, --runs and --proposals must be >= 1, --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    args = parse_args(argv)
    archs = list(dict.fromkeys(args.arch or ARCHITECTURES))
    torch.set_num_threads(os.cpu_count() or 1)
    started = time.perf_counter()
    result: dict = {"input_size": f"{WIDTH}x{HEIGHT}", "machine": machine_info(), "archs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        coco_path = make_dataset(
            Path(tmp) / "data", 2 * BATCH, classes=CLASSES, width=WIDTH, height=HEIGHT, seed=0
        )
        image = np.array(read_image(coco_path.parent / "images" / "000000.jpg"))
        log.info("training settings: today vs new, interleaved")
        result["training_settings"] = bench_settings(coco_path, args.warmup, args.steps)
        for arch in archs:
            result["archs"][arch] = bench_arch(arch, coco_path, image, args)
        if args.ap_minutes:
            result["ap_at_equal_time"] = bench_ap_at_equal_time(args.ap_minutes, Path(tmp) / "ap")
    result["total_s"] = time.perf_counter() - started
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["load_average_end"] = os.getloadavg()
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

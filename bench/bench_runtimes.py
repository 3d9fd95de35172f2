"""One detector on four runtimes: FP32 and INT8 on onnxruntime's CPU provider and on OpenVINO.

    python bench/bench_runtimes.py --checkpoint best.pt --val val/annotations.json \\
        --calibration train/images [--openvino-python /tmp/ov/bin/python] [--rounds 3]

Rows: cpu_fp32 (today's agent), cpu_int8, openvino_fp32, openvino_int8. Each row runs through
agent/detector.Detector (the agent's session options, letterbox included) and gives
frames/s and CPU ms per frame on --frames camera-like 1280x720 frames, and AP@[.5:.95] on --val
(the float model's AP minus the row's is its AP drop). The INT8 model comes from
dal/exporter/quantize.py (what `dal export --quantize int8` writes), calibrated on
--calibration-frames images of --calibration.

OpenVINO's onnxruntime build cannot share the project's environment (dal/runtimes.py), so its
rows run in a subprocess of another Python that has onnxruntime-openvino, numpy, pillow and
opencv-python-headless (--openvino-python; it imports dal from this checkout, torch-free). The
subprocess only detects; AP is computed here. Without it (or $DAL_OPENVINO_PYTHON) those rows
say so. Rounds run every
row, in an order that rotates, so that load from other processes hits all alike; the median
and the spread over rounds are reported with the load average.

    python3.11 -m venv /tmp/ov && /tmp/ov/bin/pip install onnxruntime-openvino numpy==1.26.4 \\
        pillow opencv-python-headless

Without --checkpoint/--model a light untrained 640x360 model is exported: fps only, no AP.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from frames import camera_frames

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
ROWS = ("cpu_fp32", "cpu_int8", "openvino_fp32", "openvino_int8")
PROVIDERS = {"cpu": "CPUExecutionProvider", "openvino": "OpenVINOExecutionProvider"}


# ---------------------------------------------------------------------------------------------
# the part that runs in either Python (no torch, no pycocotools)


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """fps and CPU per frame of one model on one provider, and its detections on the val
    images (boxes, labels, scores per image id)."""
    from dal.agent.detector import Detector
    from dal.coco import read_image

    frames = camera_frames(spec["frames"])
    started = time.perf_counter()
    with Detector(
        Path(spec["model"]), providers=(spec["provider"],), threads=spec["threads"]
    ) as det:
        load_s = time.perf_counter() - started
        if det.provider != spec["provider"]:
            return {"error": f"{spec['provider']} not used (got {det.provider})"}
        det.detect(frames[0])
        wall, cpu = time.perf_counter(), time.process_time()
        for frame in frames[1:]:
            det.detect(frame)
        n = len(frames) - 1
        out = {
            "fps": n / (time.perf_counter() - wall),
            "cpu_ms": 1000 * (time.process_time() - cpu) / n,
            "load_s": load_s,
            "detections": {},
        }
        for image_id, path in spec.get("val_images", []):
            d = det.detect(read_image(path))
            out["detections"][str(image_id)] = [
                d.boxes.tolist(),
                d.labels.tolist(),
                d.scores.tolist(),
            ]
    return out


def worker_main() -> int:
    """`--worker SPEC_JSON`: one measure() per spec, JSON lines on stdout."""
    import dal

    dal.__path__.append(str(REPO))  # dal.agent -> agent/ etc., as the install maps them
    for spec in json.loads(sys.argv[2]):
        print(json.dumps(measure(spec)), flush=True)
    return 0


# ---------------------------------------------------------------------------------------------
# the main process


def prepare_models(args: argparse.Namespace, tmp: Path) -> tuple[Path, Path, str]:
    """(fp32 model, int8 model, where they came from)."""
    from dal.exporter.quantize import QUANTIZED_SCOPES, calibration_images, quantize_int8
    from dal.letterbox import fit_image, plan_fit

    if args.model:
        fp32, source = args.model, str(args.model)
    elif args.checkpoint:
        from dal.trainer.export import export_onnx

        fp32, source = export_onnx(args.checkpoint, tmp / "fp32.onnx"), str(args.checkpoint)
    else:
        sys.path.insert(0, str(HERE))
        from bench_agent import export_light_model

        fp32, source = export_light_model(tmp / "fp32.onnx", 100), "light model, untrained head"
    from dal.agent.detector import Detector

    with Detector(fp32, providers=(PROVIDERS["cpu"],), warmup=False) as det:
        width, height = det.info.input_size
    if args.calibration:
        frames = calibration_images(args.calibration, args.calibration_frames, width, height)
    else:
        fit = plan_fit(1280, 720, width, height)
        frames = [fit_image(f, fit) for f in camera_frames(args.calibration_frames, seed=1)]
    scopes = args.int8_scopes.split(",") if args.int8_scopes else QUANTIZED_SCOPES
    int8 = args.int8 or quantize_int8(fp32, tmp / "int8.onnx", frames, scopes=scopes)
    return fp32, int8, source


def val_images(args: argparse.Namespace) -> tuple[Any, list[tuple[int, str]]]:
    if not args.val:
        return None, []
    from dal.coco import load_coco

    coco = load_coco(args.val, args.val_images)
    return coco, [(rec.id, str(coco.image_path(rec))) for rec in coco.images]


def ap_of(coco: Any, detections: dict[str, list], class_names: list[str]) -> float:
    from dal.coco import predictions_to_coco_results
    from dal.trainer.evaluate import coco_metrics, label_map_by_name

    mapping = label_map_by_name(coco, class_names)
    results: list[dict] = []
    for image_id, (boxes, labels, scores) in detections.items():
        results += predictions_to_coco_results(
            int(image_id),
            np.array(boxes, dtype=np.float32).reshape(-1, 4),
            np.array(labels, dtype=np.int64),
            np.array(scores, dtype=np.float32),
            mapping,
        )
    return float(coco_metrics(coco, results)["AP"])


def run_openvino(python: str, specs: list[dict]) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [python, __file__, "--worker", json.dumps(specs)],
        capture_output=True,
        text=True,
        timeout=1800,
        env=env,
    )
    lines = [json.loads(x) for x in done.stdout.splitlines() if x.startswith("{")]
    if done.returncode != 0 or len(lines) != len(specs):
        tail = done.stderr.strip().splitlines()[-3:]
        return [{"error": f"OpenVINO worker failed ({done.returncode}): {tail}"}] * len(specs)
    return lines


def one_round(args: argparse.Namespace, models: dict, val: list, order: list[str]) -> dict:
    """Every row once; the OpenVINO rows together in one subprocess."""
    got: dict[str, dict] = {}
    for row in order:
        if row in got:
            continue
        runtime, precision = row.split("_")
        spec = {
            "model": str(models[precision]),
            "provider": PROVIDERS[runtime],
            "threads": args.threads,
            "frames": args.frames,
            "val_images": val if not args.detections_done.get(row) else [],
        }
        if runtime == "cpu":
            got[row] = measure(spec)
        elif not args.openvino_python:
            got[row] = {"skipped": "no OpenVINO python given (--openvino-python)"}
        else:
            rows = [r for r in ROWS if r.startswith("openvino")]
            specs = []
            for r in rows:
                p = r.split("_")[1]
                specs.append({**spec, "model": str(models[p])})
                specs[-1]["val_images"] = val if not args.detections_done.get(r) else []
            got.update(zip(rows, run_openvino(args.openvino_python, specs), strict=True))
    return got


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", type=Path, help="trained checkpoint (.pt) to export")
    parser.add_argument("--model", type=Path, help="or: an exported FP32 model")
    parser.add_argument("--int8", type=Path, help="an INT8 model already made (else quantized)")
    parser.add_argument("--val", type=Path, help="COCO JSON for AP")
    parser.add_argument("--val-images", type=Path)
    parser.add_argument("--calibration", type=Path, help="image folder to calibrate INT8 on")
    parser.add_argument("--calibration-frames", type=int, default=64)
    parser.add_argument(
        "--int8-scopes", help="node-name prefixes to quantize, comma-separated (default: export's)"
    )
    parser.add_argument(
        "--openvino-python",
        default=os.environ.get("DAL_OPENVINO_PYTHON"),
        help="a Python with onnxruntime-openvino (default $DAL_OPENVINO_PYTHON, so that "
        "`python -m bench` can fill the OpenVINO rows)",
    )
    parser.add_argument("--frames", type=int, default=40, help="1280x720 frames timed per row")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="[detector] threads")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    args.detections_done = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        fp32, int8, source = prepare_models(args, Path(tmp_name))
        models = {"fp32": fp32, "int8": int8}
        coco, val = val_images(args)
        from dal.agent.detector import Detector

        with Detector(fp32, providers=(PROVIDERS["cpu"],), warmup=False) as det:
            class_names = list(det.info.class_names[1:])
        rounds, aps = [], {}
        for r in range(args.rounds):
            order = list(ROWS[r % len(ROWS) :] + ROWS[: r % len(ROWS)])
            got = one_round(args, models, val, order)
            row_out = {"order": ",".join(order), "load_average_1m": os.getloadavg()[0]}
            for name, res in got.items():
                if coco is not None and res.get("detections"):
                    aps[name] = ap_of(coco, res["detections"], class_names)
                    args.detections_done[name] = True
                row_out[name] = {k: v for k, v in res.items() if k != "detections"}
            rounds.append(row_out)
            print(json.dumps(row_out), file=sys.stderr)
    table = {}
    for name in ROWS:
        runs = [r[name] for r in rounds if "fps" in r[name]]
        if not runs:
            table[name] = {k: v for k, v in rounds[0][name].items()}
            continue
        fps = [x["fps"] for x in runs]
        table[name] = {
            "fps": statistics.median(fps),
            "fps_min": min(fps),
            "fps_max": max(fps),
            "cpu_ms": statistics.median(x["cpu_ms"] for x in runs),
            "AP": aps.get(name),
        }
    base = table["cpu_fp32"]
    for row in table.values():
        if "fps" in row:
            row["speed_over_cpu_fp32"] = row["fps"] / base["fps"]
            row["cpu_over_cpu_fp32"] = base["cpu_ms"] / row["cpu_ms"]
            if row["AP"] is not None and base["AP"] is not None:
                row["AP_drop"] = base["AP"] - row["AP"]
    result = {
        "model": source,
        "val": str(args.val) if args.val else None,
        "calibration": str(args.calibration) if args.calibration else "camera-like frames",
        "int8_scopes": args.int8_scopes or "dal export's",
        "frames": f"{args.frames} x 1280x720, letterboxed by the Detector",
        "threads": args.threads or "onnxruntime default",
        "table": table,
        "rounds": rounds,
        "machine": {"cpu_count": os.cpu_count(), "load_average": os.getloadavg()},
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(worker_main() if sys.argv[1:2] == ["--worker"] else main())

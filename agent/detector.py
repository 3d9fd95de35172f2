"""Run an exported detector (dal/contract.py) in onnxruntime: frame in, detections out.

The model takes one uint8 RGB image at a fixed size. Frames of any size are fitted to it
(letterbox keeps the aspect and pads; stretch does not), and boxes come back in frame pixels.
Execution providers are tried in the configured order (TensorRT, CUDA, CPU); onnxruntime skips
those whose libraries are missing, and the one actually used is logged and exposed.

A stuck inference (a hung GPU driver, a pathological input) must not freeze the agent
silently: each run happens in a worker thread and is cancelled through onnxruntime's
`RunOptions.terminate` once `timeout_s` passes; if even that does not stop it the detector
marks itself broken, so the daemon can restart (systemd's watchdog backs this up).
"""

from __future__ import annotations

import collections
import concurrent.futures
import json
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dal import contract
from dal.agent.providers import DEFAULT_PROVIDERS
from dal.agent.session import import_ort, open_session, ort_errors
from dal.errors import ModelError
from dal.letterbox import RESIZE_MODES, Fit, boxes_to_frame, fit_image, plan_fit

logger = logging.getLogger(__name__)

TERMINATE_GRACE_S = 2.0  # after a timeout, how long a cancelled run may take to give up
_LATENCY_WINDOW = 256


class InferenceTimeoutError(ModelError):
    """An inference ran longer than the watchdog allows."""


# ---------------------------------------------------------------------------------------------
# model metadata


@dataclass(frozen=True)
class ModelInfo:
    """What the model's metadata says about it (see dal/contract.py)."""

    path: Path
    version: str
    parent_version: str
    class_names: tuple[str, ...]  # index 0 = background
    input_size: tuple[int, int]  # (width, height)
    input_format: str
    contract: str
    weights_sha256: str
    architecture: str
    score_threshold: float | None
    val_ap: float | None
    created: str
    metadata: dict[str, str]

    @property
    def num_classes(self) -> int:
        """C: object classes, background not counted."""
        return len(self.class_names) - 1


def _meta_error(path: Path, message: str) -> ModelError:
    return ModelError(
        f"{path}: {message}",
        hint="export the model with `dal export` for detector contract "
        f"v{contract.CONTRACT_VERSION}",
    )


def _optional_float(meta: dict[str, str], key: str, path: Path) -> float | None:
    text = meta.get(key, "").strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        raise _meta_error(path, f"metadata {key!r} is {text!r}, not a number") from None


def parse_model_info(path: Path, meta: dict[str, str]) -> ModelInfo:
    """Check the metadata against the contract; ModelError names the file and the key."""
    for key in contract.REQUIRED_META:
        if not meta.get(key, "").strip():
            raise _meta_error(path, f"metadata key {key!r} is missing")
    if meta[contract.META_CONTRACT] != contract.CONTRACT_VERSION:
        raise _meta_error(
            path,
            f"metadata {contract.META_CONTRACT!r} is "
            f"{meta[contract.META_CONTRACT]!r}; this agent reads "
            f"{contract.CONTRACT_VERSION!r}",
        )
    if meta[contract.META_INPUT_FORMAT] != contract.INPUT_FORMAT:
        raise _meta_error(
            path,
            f"metadata {contract.META_INPUT_FORMAT!r} is "
            f"{meta[contract.META_INPUT_FORMAT]!r}, expected "
            f"{contract.INPUT_FORMAT!r}",
        )
    try:
        size = contract.parse_input_size(meta[contract.META_INPUT_SIZE])
    except ValueError as err:
        raise _meta_error(path, f"metadata {contract.META_INPUT_SIZE!r}: {err}") from None
    try:
        names = json.loads(meta[contract.META_CLASSES])
    except json.JSONDecodeError as err:
        raise _meta_error(path, f"metadata {contract.META_CLASSES!r} is not JSON ({err})") from None
    if (
        not isinstance(names, list)
        or len(names) < 2
        or names[0] != contract.BACKGROUND
        or not all(isinstance(n, str) for n in names)
    ):
        raise _meta_error(
            path,
            f"metadata {contract.META_CLASSES!r} must be a JSON list of "
            f"names starting with {contract.BACKGROUND!r}, got {names!r}",
        )
    return ModelInfo(
        path=path,
        version=meta[contract.META_VERSION],
        parent_version=meta.get(contract.META_PARENT, ""),
        class_names=tuple(names),
        input_size=size,
        input_format=meta[contract.META_INPUT_FORMAT],
        contract=meta[contract.META_CONTRACT],
        weights_sha256=meta[contract.META_WEIGHTS_SHA256],
        architecture=meta.get(contract.META_ARCH, ""),
        score_threshold=_optional_float(meta, contract.META_SCORE_THRESHOLD, path),
        val_ap=_optional_float(meta, contract.META_VAL_AP, path),
        created=meta.get(contract.META_CREATED, ""),
        metadata=dict(meta),
    )


def _check_io(path: Path, session: Any, info: ModelInfo) -> None:
    """The graph's input and outputs must be what the metadata and contract promise."""
    inputs = session.get_inputs()
    width, height = info.input_size
    if len(inputs) != 1 or inputs[0].name != contract.INPUT_NAME:
        raise _meta_error(
            path, f"expected one input {contract.INPUT_NAME!r}, got {[i.name for i in inputs]}"
        )
    if inputs[0].type != "tensor(uint8)" or list(inputs[0].shape) != [height, width, 3]:
        raise _meta_error(
            path,
            f"input {contract.INPUT_NAME!r} is {inputs[0].type} "
            f"{inputs[0].shape}, expected tensor(uint8) [{height}, {width}, 3]",
        )
    outputs = {o.name for o in session.get_outputs()}
    missing = [n for n in contract.OUTPUT_NAMES if n not in outputs]
    if missing:
        raise _meta_error(path, f"outputs {missing} are missing (graph has {sorted(outputs)})")


# ---------------------------------------------------------------------------------------------
# results and timing


@dataclass(frozen=True, eq=False)
class Detections:
    """One frame's detections in frame pixels, plus the image feature."""

    boxes: np.ndarray  # float32 [N, 4] x1, y1, x2, y2 frame pixels
    labels: np.ndarray  # int64 [N] 1..C
    scores: np.ndarray  # float32 [N]
    probs: np.ndarray  # float32 [N, C+1] softmax rows, background first
    feature: np.ndarray  # float32 [256]
    latency_s: float = 0.0

    def __len__(self) -> int:
        return len(self.boxes)

    def to_records(self, class_names: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
        """JSON-ready list: box, label, class name, score (for the pool and the wire)."""
        records = []
        for box, label, score in zip(self.boxes, self.labels, self.scores, strict=True):
            rec: dict[str, Any] = {
                "box": [round(float(v), 2) for v in box],
                "label": int(label),
                "score": round(float(score), 5),
            }
            if class_names is not None and 0 <= int(label) < len(class_names):
                rec["class"] = class_names[int(label)]
            records.append(rec)
        return records


class LatencyStats:
    """Per-call inference latency over the last few hundred calls (thread-safe)."""

    def __init__(self, window: int = _LATENCY_WINDOW) -> None:
        self._recent: collections.deque[float] = collections.deque(maxlen=window)
        self._lock = threading.Lock()
        self.count = 0
        self.timeouts = 0

    def add(self, seconds: float) -> None:
        with self._lock:
            self._recent.append(seconds)
            self.count += 1

    def summary(self) -> dict[str, float | int]:
        with self._lock:
            recent = np.array(self._recent, dtype=np.float64)
        if recent.size == 0:
            return {"count": self.count, "timeouts": self.timeouts}
        return {
            "count": self.count,
            "timeouts": self.timeouts,
            "last_s": float(recent[-1]),
            "mean_s": float(recent.mean()),
            "p50_s": float(np.percentile(recent, 50)),
            "p95_s": float(np.percentile(recent, 95)),
            "max_s": float(recent.max()),
        }


# ---------------------------------------------------------------------------------------------
# the session


class _Worker:
    """One daemon thread running inferences; a stuck one cannot block interpreter exit."""

    def __init__(self, name: str) -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Any, *args: Any) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._queue.put((future, fn, args))
        return future

    def _loop(self) -> None:
        while (item := self._queue.get()) is not None:
            future, fn, args = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as err:  # handed to the caller through the future
                future.set_exception(err)

    def stop(self) -> None:
        self._queue.put(None)


class Detector:
    """One loaded model. `detect(frame)` is safe to call from one thread at a time."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        providers: tuple[str, ...] | list[str] = DEFAULT_PROVIDERS,
        resize: str = "letterbox",
        pad_value: int = 114,
        timeout_s: float = 30.0,
        warmup: bool = True,
        threads: int = 0,
    ) -> None:
        if resize not in RESIZE_MODES:
            raise ModelError(f"resize mode {resize!r} is not one of {RESIZE_MODES}")
        self.path = Path(path)
        self.resize = resize
        self.pad_value = pad_value
        self.timeout_s = timeout_s
        self.latency = LatencyStats()
        self.broken: str | None = None
        self._session = self._load(providers, threads)
        meta = dict(self._session.get_modelmeta().custom_metadata_map)
        self.info = parse_model_info(self.path, meta)
        _check_io(self.path, self._session, self.info)
        self.provider = self._session.get_providers()[0]
        self._output_names = list(contract.OUTPUT_NAMES)
        self._errors = ort_errors(import_ort())
        self._worker = _Worker(f"infer-{self.path.name}")
        self.last_latency_s = 0.0
        self._fits: dict[tuple[int, int], Fit] = {}
        logger.info(
            "loaded model %s (version %s, %d classes, input %dx%d) on %s",
            self.path,
            self.info.version,
            self.info.num_classes,
            *self.info.input_size,
            self.provider,
        )
        if warmup:
            started = time.perf_counter()
            w, h = self.info.input_size
            try:
                self.run_input(np.full((h, w, 3), pad_value, dtype=np.uint8))
            except ModelError:
                self.close()
                raise
            logger.info("warm-up inference took %.3f s", time.perf_counter() - started)

    @classmethod
    def from_config(cls, path: str | os.PathLike[str], config: Any) -> Detector:
        """Build from a `DetectorConfig` section (dal.agent.config)."""
        return cls(
            path,
            providers=config.providers,
            resize=config.resize,
            pad_value=config.pad_value,
            timeout_s=config.timeout_s,
            warmup=config.warmup,
            threads=config.threads,
        )

    def _load(self, providers: tuple[str, ...] | list[str], threads: int) -> Any:
        return open_session(self.path, providers, threads)

    def fit_for(self, width: int, height: int) -> Fit:
        """The (cached) mapping for frames of this size."""
        fit = self._fits.get((width, height))
        if fit is None:
            fit = plan_fit(width, height, *self.info.input_size, mode=self.resize)
            self._fits[(width, height)] = fit
        return fit

    def run_input(self, model_input: np.ndarray) -> dict[str, np.ndarray]:
        """Raw outputs for an input already at the model size, under the watchdog."""
        if self.broken:
            raise ModelError(
                f"{self.path}: detector is unusable: {self.broken}",
                hint="restart the agent (or load another model)",
            )
        run_options = import_ort().RunOptions()
        started = time.perf_counter()
        future = self._worker.submit(
            self._session.run, self._output_names, {contract.INPUT_NAME: model_input}, run_options
        )
        try:
            values = future.result(timeout=self.timeout_s)
        except concurrent.futures.TimeoutError:
            self._cancel(future, run_options)
            raise InferenceTimeoutError(
                f"{self.path}: inference took longer than {self.timeout_s:.1f} s",
                hint="check the GPU/CPU load; raise [detector] timeout_s if the machine is slow",
            ) from None
        except self._errors as err:
            raise ModelError(f"{self.path}: inference failed: {err}") from err
        self.last_latency_s = time.perf_counter() - started
        self.latency.add(self.last_latency_s)
        return dict(zip(self._output_names, values, strict=True))

    def _cancel(self, future: concurrent.futures.Future, run_options: Any) -> None:
        self.latency.timeouts += 1
        run_options.terminate = True
        try:
            future.exception(timeout=TERMINATE_GRACE_S)
        except concurrent.futures.TimeoutError:
            self.broken = f"an inference is stuck for more than {self.timeout_s:.1f} s"
            logger.error("%s: %s and does not stop", self.path, self.broken)
            return
        logger.warning("%s: inference cancelled after %.1f s", self.path, self.timeout_s)

    def detect(self, image: np.ndarray) -> Detections:
        """Detections for one uint8 HxWx3 RGB frame, boxes in its pixels."""
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected uint8 HxWx3 RGB, got {image.dtype} {image.shape}")
        fit = self.fit_for(image.shape[1], image.shape[0])
        out = self.run_input(fit_image(image, fit, self.pad_value))
        return self._detections(out, fit)

    def _detections(self, out: dict[str, np.ndarray], fit: Fit) -> Detections:
        boxes = np.asarray(out[contract.OUTPUT_BOXES], dtype=np.float32).reshape(-1, 4)
        n = len(boxes)
        labels = np.asarray(out[contract.OUTPUT_LABELS], dtype=np.int64).reshape(-1)
        scores = np.asarray(out[contract.OUTPUT_SCORES], dtype=np.float32).reshape(-1)
        probs = np.asarray(out[contract.OUTPUT_PROBS], dtype=np.float32)
        feature = np.asarray(out[contract.OUTPUT_FEATURE], dtype=np.float32).reshape(-1)
        width = len(self.info.class_names)
        if (
            len(labels) != n
            or len(scores) != n
            or probs.shape != (n, width)
            or feature.shape != (contract.FEATURE_DIM,)
        ):
            raise ModelError(
                f"{self.path}: outputs break the contract: boxes {boxes.shape}, labels "
                f"{labels.shape}, scores {scores.shape}, probs {probs.shape} (want [N, {width}]), "
                f"feature {feature.shape} (want [{contract.FEATURE_DIM}])"
            )
        return Detections(
            boxes=boxes_to_frame(boxes, fit),
            labels=labels,
            scores=scores,
            probs=probs,
            feature=feature,
            latency_s=self.last_latency_s,
        )

    def close(self) -> None:
        """Stop the worker thread (a stuck run is abandoned: the thread is a daemon)."""
        self._worker.stop()

    def __enter__(self) -> Detector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""Shared pieces of the agent daemon tests: small contract models, configs, a receiver.

`contract_model` writes a real ONNX graph that follows dal/contract.py and reacts to its input
(the feature is a 16x16 grey thumbnail, centred; the softmax rows come from that feature), so
scores and features differ per frame and per model version, in well under a millisecond.
`Receiver` is the trainer's ingest reduced to dal.link's SampleReceiver and a folder store.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from broker import SampleStore, wait_until
from recordings import make_frames, write_kinect_mkv

from dal import contract
from dal.agent.config import AgentConfig, load_agent_config
from dal.config import toml_value
from dal.link import (
    AgentStatus,
    Event,
    Link,
    LinkConfig,
    SampleHeader,
    SampleReceiver,
    TransferAssembler,
    topic,
)

W, H = 160, 96  # model input (and recording) size
CLASSES = [contract.BACKGROUND, "washer", "bracket"]
BOXES = np.array([[16, 8, 80, 56], [100, 40, 150, 90], [40, 30, 120, 80]], np.float32)
AGENT = "cam1"


def model_metadata(version: str = "m1", **extra: str) -> dict[str, str]:
    """The metadata of a contract model; `extra` adds or replaces keys."""
    return {
        contract.META_CONTRACT: contract.CONTRACT_VERSION,
        contract.META_VERSION: version,
        contract.META_PARENT: "",
        contract.META_CLASSES: json.dumps(CLASSES),
        contract.META_INPUT_SIZE: contract.format_input_size(W, H),
        contract.META_INPUT_FORMAT: contract.INPUT_FORMAT,
        contract.META_WEIGHTS_SHA256: "cd" * 32,
        **extra,
    }


def contract_model(
    path: Path,
    version: str = "m1",
    *,
    bias: float = 0.0,
    nan: bool = False,
    slow_matmuls: int = 0,
    fail_above: float | None = None,
    boxes: np.ndarray = BOXES,
    width: int = len(CLASSES),
    meta: dict[str, str] | None = None,
) -> Path:
    """An ONNX model obeying the detector contract whose outputs depend on the input.

    `bias` shifts the logits (a "retrained" model scores differently), `nan` poisons the
    feature (a broken model), `slow_matmuls` adds dead weight (a too slow model),
    `fail_above` makes it drop a box, breaking the contract, on frames whose mean grey level
    is above that (a model that passes a smoke test on dark images and fails later). `width`
    other than the class count breaks the contract's probs shape; `meta` replaces the
    metadata (model_metadata(version) by default)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    n = len(boxes)
    rng = np.random.default_rng(7)
    row = np.zeros(width, np.float32)
    row[:3] = np.array([1.0, 2.0, 0.5], np.float32)[:width]
    logits = np.tile(row, (n, 1))
    logits[:, 0] += bias
    consts: dict[str, np.ndarray] = {
        "c_boxes": boxes.astype(np.float32),
        "c_labels": (np.arange(n) % (width - 1) + 1).astype(np.int64),
        "c_scores": np.linspace(0.9, 0.3, n).astype(np.float32),
        "c_grid": np.array([1, 1, H, W], np.int64),
        "c_flat": np.array([contract.FEATURE_DIM], np.int64),
        "c_255": np.array(255.0, np.float32),
        "c_offset": (rng.standard_normal(contract.FEATURE_DIM) * 1e-3).astype(np.float32),
        "c_rows": np.array([n, width], np.int64),
        "c_start": np.array([0], np.int64),
        "c_end": np.array([n * width], np.int64),
        "c_gain": np.array(40.0, np.float32),
        "c_logits": logits,
        "c_poison": np.array(np.nan if nan else 0.0, np.float32),
    }
    nodes = [
        helper.make_node("Cast", ["image"], ["imgf"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["imgf"], ["grey"], axes=[2], keepdims=0),
        helper.make_node("Reshape", ["grey", "c_grid"], ["grey4"]),
        helper.make_node(
            "AveragePool",
            ["grey4"],
            ["thumb"],
            kernel_shape=[H // 16, W // 16],
            strides=[H // 16, W // 16],
        ),
        helper.make_node("Reshape", ["thumb", "c_flat"], ["flat"]),
        helper.make_node("ReduceMean", ["flat"], ["level"], axes=[0], keepdims=1),
        helper.make_node("Sub", ["flat", "level"], ["centred"]),
        helper.make_node("Div", ["centred", "c_255"], ["scaled"]),
        helper.make_node("Add", ["scaled", "c_offset"], ["feat0"]),
        helper.make_node("Add", ["feat0", "c_poison"], ["feat1"]),
        helper.make_node("Slice", ["feat1", "c_start", "c_end"], ["head"]),
        helper.make_node("Reshape", ["head", "c_rows"], ["head2"]),
        helper.make_node("Mul", ["head2", "c_gain"], ["wiggle"]),
        helper.make_node("Add", ["wiggle", "c_logits"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    for out in ("labels", "scores"):
        nodes.append(helper.make_node("Identity", [f"c_{out}"], [out]))
    if fail_above is None:
        nodes.append(helper.make_node("Identity", ["c_boxes"], ["boxes"]))
    else:
        consts["c_n"] = np.array([n], np.int64)
        consts["c_threshold"] = np.array([fail_above], np.float32)
        nodes += [
            helper.make_node("ReduceMean", ["grey"], ["brightness"], axes=[0, 1], keepdims=0),
            helper.make_node("Greater", ["brightness", "c_threshold"], ["bright"]),
            helper.make_node("Cast", ["bright"], ["drop"], to=TensorProto.INT64),
            helper.make_node("Sub", ["c_n", "drop"], ["keep"]),
            helper.make_node("Slice", ["c_boxes", "c_start", "keep"], ["boxes"]),
        ]
    if slow_matmuls:
        consts["c_sq"] = np.array([512, 512], np.int64)
        consts["c_w"] = np.full((512, 512), 1 / 512, np.float32)
        consts["c_zero"] = np.array(0.0, np.float32)
        nodes.append(helper.make_node("Expand", ["level", "c_sq"], ["x0"]))
        nodes += [
            helper.make_node("MatMul", [f"x{i}", "c_w"], [f"x{i + 1}"]) for i in range(slow_matmuls)
        ]
        nodes += [
            helper.make_node("ReduceMax", [f"x{slow_matmuls}"], ["s"], keepdims=0),
            helper.make_node("Mul", ["s", "c_zero"], ["s0"]),
            helper.make_node("Add", ["feat1", "s0"], ["feature"]),
        ]
    else:
        nodes.append(helper.make_node("Identity", ["feat1"], ["feature"]))
    outputs = [
        helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [None, 4]),
        helper.make_tensor_value_info("labels", TensorProto.INT64, [n]),
        helper.make_tensor_value_info("scores", TensorProto.FLOAT, [n]),
        helper.make_tensor_value_info("probs", TensorProto.FLOAT, [n, width]),
        helper.make_tensor_value_info("feature", TensorProto.FLOAT, [contract.FEATURE_DIM]),
    ]
    graph = helper.make_graph(
        nodes,
        "contract",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, [H, W, 3])],
        outputs,
        [numpy_helper.from_array(v, k) for k, v in consts.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, model_metadata(version) if meta is None else meta)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def recording(path: Path, n: int = 24, seed: int = 0) -> Path:
    """A Kinect-like MKV of n clearly different 160x96 frames."""
    return write_kinect_mkv(path, make_frames(n, W, H, seed=seed))


# ---------------------------------------------------------------------------------------------
# configs


def _toml(tables: dict[str, dict[str, Any]]) -> str:
    lines: list[str] = []
    for name, values in tables.items():
        lines.append(f"[{name}]")
        lines += [f"{key} = {toml_value(value)}" for key, value in values.items()]
        lines.append("")
    return "\n".join(lines)


def write_config(
    tmp: Path,
    *,
    model: Path | None,
    source: Path | str,
    port: int | None,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> Path:
    """An agent TOML for tests: fast replay, keep every frame, short timeouts."""
    tables: dict[str, dict[str, Any]] = {
        "agent": {"id": AGENT, "data_dir": str(tmp / "agent")},
        "source": {"kind": "mkv", "uri": str(source)},
        "source.reconnect": {"initial_s": 0.2, "max_s": 0.5},
        "detector": {"providers": ["CPUExecutionProvider"], "threads": 1},
        "policy": {"min_interval_s": 0.0, "dedup_window": 0},
        "drift": {"enabled": False},
        "pool": {"min_free_bytes": 0},
        "query": {"strategy": "dbal", "k": 4, "beta": 2.0},
        "cycle": {"pool_growth": 0, "min_pool": 4},
        "mqtt": {"port": port or 1883},
        "link": {
            "enabled": port is not None,
            "ack_timeout_s": 2.0,
            "retry_max_s": 0.5,
            "status_interval_s": 1.0,
            "metrics_interval_s": 1.0,
        },
        "update": {"probation_frames": 0},
        "supervisor": {"check_s": 0.1, "status_file_s": 0.2},
    }
    if model is not None:
        tables["detector"]["model"] = str(model)
    for name, values in (overrides or {}).items():
        tables.setdefault(name, {}).update(values)
    path = tmp / "agent.toml"
    path.write_text(_toml(tables))
    return path


def load(path: Path) -> AgentConfig:
    return load_agent_config(path, env={})


# ---------------------------------------------------------------------------------------------
# the other side of the link


class Receiver:
    """Trainer-side ingest: stores each sample once, acks it; `delay_s` slows every store."""

    def __init__(self, link: Link, folder: Path, delay_s: float = 0.0) -> None:
        self.store = SampleStore(folder / "store")
        self.headers: dict[str, SampleHeader] = {}
        self.delay_s = delay_s
        self._lock = threading.Lock()
        self.assembler = TransferAssembler(folder / "spool", self._store, self.store.has)
        self.receiver = SampleReceiver(link, self.assembler)

    def _store(self, header: SampleHeader, path: Path) -> None:
        if self.delay_s:
            time.sleep(self.delay_s)
        with self._lock:
            self.headers[header.sample_id] = header
        self.store.store(header, path)

    @property
    def stores(self) -> Counter[str]:
        return self.store.stores

    def wait_for(self, n: int, timeout_s: float) -> None:
        wait_until(lambda: len(self.stores) >= n, timeout_s, f"{n} stored samples")


class Watcher:
    """Collects an agent's events and retained status from the broker."""

    def __init__(self, link: Link, agent: str = AGENT) -> None:
        self.events: list[Event] = []
        self.status: AgentStatus | None = None
        self._lock = threading.Lock()
        root = link.config.root
        link.subscribe_message(topic("agent_events", root, agent), Event, self._on_event)
        link.subscribe_message(topic("agent_status", root, agent), AgentStatus, self._on_status)

    def _on_event(self, _topic: str, event: Event) -> None:
        with self._lock:
            self.events.append(event)

    def _on_status(self, _topic: str, status: AgentStatus) -> None:
        self.status = status

    def of(self, kind: str) -> list[Event]:
        with self._lock:
            return [e for e in self.events if e.kind == kind]

    def wait_event(
        self, kind: str, timeout_s: float, where: Callable[[Event], bool] = lambda e: True
    ) -> Event:
        found: list[Event] = []

        def seen() -> bool:
            found[:] = [e for e in self.of(kind) if where(e)]
            return bool(found)

        wait_until(seen, timeout_s, f"event {kind}")
        return found[0]

    def wait_status(self, where: Callable[[AgentStatus], bool], timeout_s: float) -> AgentStatus:
        wait_until(lambda: self.status is not None and where(self.status), timeout_s, "status")
        assert self.status is not None
        return self.status


def trainer_link(port: int, client_id: str = "trainer") -> Link:
    config = LinkConfig(
        client_id, port=port, reconnect_min_s=0.1, reconnect_max_s=0.5, publish_timeout_s=5.0
    )
    return Link(config).start(10.0)

"""The one place an onnxruntime session for a detector is built, with the agent's settings.

Why one function: the detector, the benches (bench/bench_agent.py compares the agent with a bare
session) and the exporter's checks must all run the model the same way; a baseline with other
options (spin-waiting on, a different thread count) measures something else.

Settings and why:
    allow_spinning = 0   no busy-waiting between frames: an always-on daemon shares the CPU
                         (~12 % less CPU per frame than onnxruntime's default)
    intra_op threads     `threads` (0 = onnxruntime's default: one per physical core)
    inter_op threads 1   the graph is one chain of ops; sequential execution needs no pool
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dal.agent.providers import choose_providers, provider_options
from dal.errors import DependencyError, ModelError


def import_ort() -> Any:
    """onnxruntime, or a DependencyError that says which extra to install."""
    try:
        import onnxruntime
    except ImportError:
        raise DependencyError(
            "onnxruntime is not installed",
            hint="pip install 'dal[agent,cpu]' (or nvidia / intel instead of cpu: one runtime)",
        ) from None
    return onnxruntime


def ort_errors(ort: Any) -> tuple[type[BaseException], ...]:
    """onnxruntime's own exception classes (they do not share a base class beyond Exception)."""
    state = ort.capi.onnxruntime_pybind11_state
    names = (
        "Fail",
        "InvalidGraph",
        "InvalidProtobuf",
        "NoSuchFile",
        "InvalidArgument",
        "RuntimeException",
        "EPFail",
        "NotImplemented",
    )
    return tuple(getattr(state, n) for n in names if hasattr(state, n))


def session_options(ort: Any, threads: int = 0) -> Any:
    """The agent's SessionOptions (see the module docstring)."""
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    if threads:
        options.intra_op_num_threads = threads
    return options


def open_session(path: Path, providers: Sequence[str], threads: int = 0) -> Any:
    """An InferenceSession on the first usable of `providers`, with the agent's options;
    ModelError when the file is missing or onnxruntime cannot load it."""
    ort = import_ort()
    if not path.is_file():
        raise ModelError(
            f"model file {path} not found",
            hint="set [detector] model or let the agent download one",
        )
    chosen = choose_providers(providers, ort.get_available_providers())
    options = [provider_options(name, threads) for name in chosen]
    try:
        return ort.InferenceSession(
            str(path),
            sess_options=session_options(ort, threads),
            providers=list(zip(chosen, options, strict=True)),
        )
    except ort_errors(ort) as err:
        raise ModelError(
            f"{path}: onnxruntime cannot load it ({err})",
            hint="the file is corrupt or not an ONNX model; export it again",
        ) from None

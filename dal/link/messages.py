"""JSON control messages of the v1 contract, validated into frozen dataclasses.

Every message decodes with `Cls.from_json(payload)`, which raises LinkError for anything that is
not the contract (bad JSON, a missing key, a wrong type, NaN, a value out of range); the Link
logs and counts those and the handler never sees them. Unknown keys are ignored so a newer peer
may add fields; removing or re-typing a field is a new contract version (dal/v2).
Times are Unix seconds (float, UTC).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import time
import types
import typing
import uuid
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self, TypeVar

from dal.errors import LinkError
from dal.link.topics import check_agent_id, check_group_id

MAX_JSON_BYTES = 1 << 20  # a header with a 256-float feature and 100 boxes is ~10 KiB
MAX_REQUEST_CHUNKS = 64
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

# Which retained manifest an agent follows, most specific first.
MANIFEST_SCOPES = ("agent", "group", "global")

T = TypeVar("T", bound="Message")


def _fail(cls: type, path: str, why: str) -> LinkError:
    return LinkError(f"{cls.__name__}.{path}: {why}", hint="the sender breaks the dal/v1 contract")


def _coerce(cls: type, path: str, value: Any, tp: Any) -> Any:
    """Check `value` (parsed JSON) against the annotation `tp`; return it in dataclass form."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        (inner,) = [o for o in options if o is not type(None)]
        return _coerce(cls, path, value, inner)
    if origin is tuple:
        item_type = typing.get_args(tp)[0]
        if not isinstance(value, list | tuple):
            raise _fail(cls, path, f"expected a list, got {type(value).__name__}")
        return tuple(_coerce(cls, f"{path}[{i}]", v, item_type) for i, v in enumerate(value))
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise _fail(cls, path, f"expected an object, got {type(value).__name__}")
        return dict(value)
    if isinstance(tp, type) and issubclass(tp, Message):
        if not isinstance(value, dict):
            raise _fail(cls, path, f"expected an object, got {type(value).__name__}")
        return tp.from_dict(value)
    return _coerce_scalar(cls, path, value, tp)


def _coerce_scalar(cls: type, path: str, value: Any, tp: Any) -> Any:
    # bool is an int in Python; JSON true must not pass as 1.
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if ok and not _finite(value):
            raise _fail(cls, path, "must be a finite number")
        value = float(value) if ok else value
    elif tp is str:
        ok = isinstance(value, str)
    else:  # pragma: no cover - a field type this decoder does not know is a programming error
        raise TypeError(f"{cls.__name__}.{path}: unsupported field type {tp!r}")
    if not ok:
        raise _fail(cls, path, f"expected {tp.__name__}, got {type(value).__name__}")
    return value


def _finite(value: float) -> bool:
    """True for a number that fits a float and is not inf/NaN (JSON allows 1e999 and 10**400)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not allowed")


@dataclass(frozen=True)
class Message:
    """Base of every JSON message: strict decoding, canonical encoding."""

    _hints: ClassVar[dict[type, dict[str, Any]]] = {}

    @classmethod
    def _field_types(cls) -> dict[str, Any]:
        if cls not in Message._hints:
            Message._hints[cls] = typing.get_type_hints(cls)
        return Message._hints[cls]

    @classmethod
    def from_dict(cls, obj: Any) -> Self:
        if not isinstance(obj, dict):
            raise _fail(cls, "", f"expected a JSON object, got {type(obj).__name__}")
        hints = cls._field_types()
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name in obj:
                kwargs[f.name] = _coerce(cls, f.name, obj[f.name], hints[f.name])
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise _fail(cls, f.name, "missing")
        return cls(**kwargs)

    @classmethod
    def from_json(cls, payload: bytes | str) -> Self:
        """Decode and validate; LinkError on anything that is not this message."""
        if len(payload) > MAX_JSON_BYTES:
            raise _fail(cls, "", f"payload of {len(payload)} bytes exceeds {MAX_JSON_BYTES}")
        try:
            obj = json.loads(payload, parse_constant=_reject_constant)
        except (ValueError, UnicodeDecodeError, RecursionError) as err:
            raise _fail(cls, "", f"not valid JSON ({err})") from None
        return cls.from_dict(obj)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> bytes:
        """Compact JSON with sorted keys: the same message always gives the same bytes."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), allow_nan=False)
        return text.encode("utf-8")

    def _require(self, ok: bool, path: str, why: str) -> None:
        if not ok:
            raise _fail(type(self), path, why)


def now() -> float:
    return time.time()


@dataclass(frozen=True)
class AgentStatus(Message):
    """Retained on agents/{agent}/status; the Last Will carries state 'offline'."""

    agent: str
    state: str  # "online" | "offline"
    time: float
    model_version: str | None = None
    pool_size: int = 0
    fps: float = 0.0
    last_cycle: float | None = None
    outbox_backlog: int = 0
    storage_error: str | None = None  # why capture is paused (the pool cannot store), if it is
    # Rollouts (all optional: an older agent leaves them out and None means "not said").
    group: str | None = None  # its [agent] group
    manifest_scope: str | None = None  # which manifest it follows: agent, group or global
    manifest_version: str | None = None  # the version that manifest names
    probation_left: int | None = None  # inferences left in probation; 0 = passed or none

    def __post_init__(self) -> None:
        check_agent_id(self.agent)
        self._require(self.state in ("online", "offline"), "state", "must be online or offline")
        self._require(self.pool_size >= 0, "pool_size", "must be >= 0")
        self._require(self.outbox_backlog >= 0, "outbox_backlog", "must be >= 0")
        if self.group is not None:
            check_group_id(self.group)
        scope_ok = self.manifest_scope in (None, *MANIFEST_SCOPES)
        self._require(scope_ok, "manifest_scope", f"must be one of {MANIFEST_SCOPES}")
        version = self.manifest_version
        self._require(version is None or bool(_NAME.match(version)), "manifest_version", "bad")
        left = self.probation_left
        self._require(left is None or 0 <= left <= 10**9, "probation_left", "must be 0..1e9")


@dataclass(frozen=True)
class TrainerStatus(Message):
    """Retained on trainer/status; the trainer's Last Will carries state 'offline'."""

    state: str
    time: float
    model_version: str | None = None
    samples_stored: int = 0
    labelling_queue: int = 0

    def __post_init__(self) -> None:
        self._require(self.state in ("online", "offline"), "state", "must be online or offline")


@dataclass(frozen=True)
class Metrics(Message):
    """Periodic numbers of an agent, name -> value."""

    agent: str
    time: float
    values: dict[str, Any]

    def __post_init__(self) -> None:
        check_agent_id(self.agent)
        for key, value in self.values.items():
            is_number = isinstance(value, int | float) and not isinstance(value, bool)
            self._require(is_number and _finite(value), f"values.{key}", "must be a finite number")


@dataclass(frozen=True)
class Event(Message):
    """Something happened on an agent. kind 'command_result' carries data {id, ok, message}."""

    agent: str
    time: float
    kind: str
    message: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_agent_id(self.agent)
        self._require(bool(_NAME.match(self.kind)), "kind", "must be a short name")


@dataclass(frozen=True)
class Param:
    """One command parameter: its JSON type and the range (numbers) or length (strings) it
    must keep, so a value no cycle could run with is refused before the agent acknowledges it."""

    type: type
    low: float | None = None
    high: float | None = None
    max_len: int = 64

    def problem(self, value: Any) -> str | None:
        """What is wrong with a value that already has the right type, or None."""
        if isinstance(value, str):
            too_long = len(value) > self.max_len
            return f"must be at most {self.max_len} characters" if too_long else None
        if self.low is not None and value < self.low:
            return f"must be >= {self.low:g}, got {value!r}"
        if self.high is not None and value > self.high:
            return f"must be <= {self.high:g}, got {value!r}"
        return None


# Upper bounds of the query settings: far above any real pool, far below what overflows.
QUERY_K_MAX = 100_000
QUERY_BETA_MAX = 100.0
_K = Param(int, 1, QUERY_K_MAX)

# action -> {parameter: Param}. Every parameter is optional; unknown ones are refused.
COMMAND_PARAMS: dict[str, dict[str, Param]] = {
    "trigger_cycle": {"k": _K},
    "set_query": {"k": _K, "beta": Param(float, 1.0, QUERY_BETA_MAX), "strategy": Param(str)},
    "rescore": {},
}


@dataclass(frozen=True)
class Command(Message):
    """Operator/trainer -> agent. The agent answers with an Event kind 'command_result', also
    when it refuses the command (`readable_id` finds whom to answer)."""

    id: str
    action: str
    time: float
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._require(bool(_NAME.match(self.id)), "id", "must be a short name (e.g. a uuid)")
        allowed = COMMAND_PARAMS.get(self.action)
        if allowed is None:
            raise _fail(type(self), "action", f"must be one of {sorted(COMMAND_PARAMS)}")
        for key, value in self.params.items():
            self._require(key in allowed, f"params.{key}", f"allowed: {sorted(allowed)}")
            param = allowed[key]
            value = _coerce_scalar(type(self), f"params.{key}", value, param.type)
            problem = param.problem(value)
            self._require(problem is None, f"params.{key}", problem or "")

    @classmethod
    def new(cls, action: str, **params: Any) -> Command:
        return cls(id=uuid.uuid4().hex, action=action, time=now(), params=params)

    @staticmethod
    def readable_id(payload: bytes | str) -> str | None:
        """The id of a payload that is not a valid Command, when one can still be read (NaN and
        Infinity allowed here), so the refusal can be answered; None when there is none."""
        if len(payload) > MAX_JSON_BYTES:
            return None
        try:
            obj = json.loads(payload)
        except (ValueError, UnicodeDecodeError, RecursionError):
            return None
        ident = obj.get("id") if isinstance(obj, dict) else None
        return ident if isinstance(ident, str) and _NAME.match(ident) else None


@dataclass(frozen=True)
class Detection(Message):
    """One box of the model's output on the sample, in input pixels."""

    box: tuple[float, ...]  # x1, y1, x2, y2
    label: int
    score: float

    def __post_init__(self) -> None:
        self._require(len(self.box) == 4, "box", "must be [x1, y1, x2, y2]")


def new_sample_id(agent: str) -> str:
    """A globally unique, idempotent sample id: '{agent}:{uuid4 hex}'."""
    return f"{check_agent_id(agent)}:{uuid.uuid4().hex}"


def chunk_count(size: int, chunk_size: int) -> int:
    return max(1, -(-size // chunk_size))


@dataclass(frozen=True)
class SampleHeader(Message):
    """First message of a sample transfer; the chunks follow on samples/chunk."""

    sample_id: str
    agent: str
    captured_at: float
    model_version: str
    score: float
    feature: tuple[float, ...]
    detections: tuple[Detection, ...]
    sha256: str
    size: int
    chunk_size: int
    chunk_count: int
    content_type: str = "image/jpeg"
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_agent_id(self.agent)
        prefix, _, rest = self.sample_id.partition(":")
        ok_id = prefix == self.agent and bool(_NAME.match(rest))
        self._require(ok_id, "sample_id", f"must be '{self.agent}:<unique name>'")
        self._require(bool(_SHA256.match(self.sha256)), "sha256", "must be 64 lowercase hex")
        self._require(self.size >= 1, "size", "must be >= 1")
        self._require(self.chunk_size >= 1, "chunk_size", "must be >= 1")
        expected = chunk_count(self.size, self.chunk_size)
        self._require(self.chunk_count == expected, "chunk_count", f"must be {expected}")

    @classmethod
    def for_payload(
        cls, data: bytes, *, sample_id: str, agent: str, chunk_size: int, **fields: Any
    ) -> SampleHeader:
        """Build a header for `data`: size, sha256 and chunk count computed here."""
        return cls(
            sample_id=sample_id,
            agent=agent,
            sha256=hashlib.sha256(data).hexdigest(),
            size=len(data),
            chunk_size=chunk_size,
            chunk_count=chunk_count(len(data), chunk_size),
            **fields,
        )

    @property
    def transfer_id(self) -> bytes:
        return transfer_id_for(self.sample_id)


def transfer_id_for(name: str) -> bytes:
    """16-byte transfer id carried by every chunk: sha256 of the sample id or model sha256."""
    return hashlib.sha256(name.encode("utf-8")).digest()[:16]


ACK_STATUSES = ("stored", "duplicate", "rejected")


@dataclass(frozen=True)
class Ack(Message):
    """Trainer -> agent: 'stored' and 'duplicate' mean durable on the trainer; mark shipped."""

    sample_id: str
    status: str
    time: float
    reason: str = ""

    def __post_init__(self) -> None:
        self._require(self.status in ACK_STATUSES, "status", f"must be one of {ACK_STATUSES}")

    @property
    def ok(self) -> bool:
        return self.status != "rejected"


# A manifest meta key: true when the model is meant to have other class names than the one it
# replaces (agents refuse such a model otherwise). Signed like all of meta.
META_CLASSES_CHANGED = "classes_changed"


@dataclass(frozen=True)
class ModelManifest(Message):
    """Retained on models/manifest. `signature` is Ed25519 over `signed_bytes()`."""

    version: str
    filename: str
    size: int
    sha256: str
    chunk_size: int
    chunk_count: int
    created: float
    key_id: str = ""
    signature: str = ""
    parent_version: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._require(bool(_NAME.match(self.version)), "version", "must be a short safe name")
        self._require(bool(_NAME.match(self.filename)), "filename", "must be a plain file name")
        self._require(bool(_SHA256.match(self.sha256)), "sha256", "must be 64 lowercase hex")
        self._require(self.size >= 1, "size", "must be >= 1")
        self._require(self.chunk_size >= 1, "chunk_size", "must be >= 1")
        expected = chunk_count(self.size, self.chunk_size)
        self._require(self.chunk_count == expected, "chunk_count", f"must be {expected}")

    def signed_bytes(self) -> bytes:
        """What the signature covers: the canonical JSON of every field except the signature."""
        body = self.to_dict()
        del body["signature"]
        return json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()

    @property
    def transfer_id(self) -> bytes:
        return transfer_id_for(f"model:{self.version}:{self.sha256}")


@dataclass(frozen=True)
class ModelRequest(Message):
    """Agent -> trainer: send me these chunks of model `version`."""

    version: str
    chunks: tuple[int, ...]

    def __post_init__(self) -> None:
        n = len(self.chunks)
        self._require(0 < n <= MAX_REQUEST_CHUNKS, "chunks", f"1..{MAX_REQUEST_CHUNKS} indices")
        self._require(all(i >= 0 for i in self.chunks), "chunks", "indices must be >= 0")

"""The edge agent's configuration: one frozen dataclass per TOML section.

Read once at start-up with `load_agent_config`; nothing mutates it afterwards (runtime state,
such as the model version in use, lives in the daemon). The reference file
docs/config/agent.toml is generated from these classes (`python -m dal.config
dal.agent.config:AgentConfig`) and a test keeps it current.

Relative paths (pool folder, model) are resolved against `[agent] data_dir` by `resolve_path`.
"""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Literal

from dal import config as cfg
from dal.agent.homeassistant import HomeAssistantSection
from dal.agent.providers import DEFAULT_PROVIDERS
from dal.agent.source_config import SourceConfig
from dal.config import doc
from dal.errors import ConfigError, LinkError
from dal.link.messages import QUERY_BETA_MAX, QUERY_K_MAX
from dal.link.settings import MqttSection
from dal.metrics_http import MetricsSection
from dal.scoring import AGGREGATES, METHODS
from dal.strategies import STRATEGIES

SEED_MAX = 2**31 - 1  # the cycle number is added, and scikit-learn takes seeds below 2**32


@dataclass(frozen=True)
class AgentSection:
    id: str = field(
        default="",
        metadata=doc("Agent id used in MQTT topics and sample ids; empty = the host name."),
    )
    data_dir: Path = field(
        default=Path("/var/lib/dal"),
        metadata=doc(
            "Folder for the pool, outbox and models; relative paths elsewhere are resolved here."
        ),
    )
    group: str = field(
        default="",
        metadata=doc(
            "Rollout group (e.g. a production line): follow the group's model manifest when "
            "there is one; empty = the global manifest only."
        ),
    )

    def __post_init__(self) -> None:
        from dal.link.topics import check_group_id

        if self.group:
            try:
                check_group_id(self.group)
            except LinkError as err:
                raise ValueError(f"group {self.group!r} cannot be a group id: {err.hint}") from None


@dataclass(frozen=True)
class DetectorConfig:
    model: Path | None = field(
        default=None,
        metadata=doc("ONNX model to start with; unset = the current model under data_dir/models."),
    )
    providers: tuple[str, ...] = field(
        default=DEFAULT_PROVIDERS,
        metadata=doc(
            "onnxruntime execution providers in order of preference; unavailable ones are skipped."
        ),
    )
    resize: Literal["letterbox", "stretch"] = field(
        default="letterbox",
        metadata=doc("Fit frames to the model input keeping the aspect (letterbox) or not."),
    )
    pad_value: int = field(
        default=114, metadata=doc("Grey level of the letterbox borders.", min=0, max=255)
    )
    timeout_s: float = field(
        default=30.0,
        metadata=doc("An inference taking longer than this counts as stuck (watchdog).", min=0.1),
    )
    warmup: bool = field(
        default=True, metadata=doc("Run one inference at load so the first frame is not slow.")
    )
    threads: int = field(
        default=0, metadata=doc("onnxruntime intra-op threads (0 = its default).", min=0)
    )
    helper_nice: int = field(
        default=10,
        metadata=doc(
            "Nice value added to the capture and store threads (0 = none): they then run in "
            "the gaps between inference's operators instead of stalling its threads.",
            min=0,
            max=19,
        ),
    )


@dataclass(frozen=True)
class PolicyConfig:
    min_interval_s: float = field(
        default=1.0,
        metadata=doc("Minimum time between two kept frames (frame timestamps).", min=0.0),
    )
    dedup_threshold: float = field(
        default=0.98,
        metadata=doc(
            "Skip a frame whose feature has cosine similarity ≥ this to a recently kept one.",
            min=-1.0,
            max=1.0,
        ),
    )
    dedup_window: int = field(
        default=32, metadata=doc("How many recently kept features to compare with.", min=0)
    )


@dataclass(frozen=True)
class DriftConfig:
    enabled: bool = field(
        default=True, metadata=doc("Watch score and feature statistics for drift.")
    )
    window: int = field(
        default=200,
        metadata=doc(
            "Effective window (frames) of the running score and feature statistics.", min=1
        ),
    )
    min_samples: int = field(
        default=100,
        metadata=doc(
            "Frames seen before drift is judged (and before a missing reference is set).", min=1
        ),
    )
    score_z: float = field(
        default=1.0,
        metadata=doc(
            "Drift when the mean image score moves this many reference std devs.", min=0.0
        ),
    )
    feature_distance: float = field(
        default=0.1,
        metadata=doc(
            "Drift when the mean feature's cosine distance to the reference reaches this.", min=0.0
        ),
    )


@dataclass(frozen=True)
class PoolConfig:
    dir: Path = field(
        default=Path("pool"),
        metadata=doc("Folder of the pool database and JPEGs (under data_dir)."),
    )
    max_images: int = field(
        default=5000, metadata=doc("Most images kept; the least informative go first.", min=1)
    )
    max_bytes: int = field(default=1 << 30, metadata=doc("Most JPEG bytes kept.", min=1))
    min_free_bytes: int = field(
        default=256 << 20,
        metadata=doc("Refuse new images when the disk has less free space than this.", min=0),
    )
    jpeg_quality: int = field(
        default=90, metadata=doc("JPEG quality of pooled frames.", min=1, max=100)
    )
    full_retry_s: float = field(
        default=5.0,
        metadata=doc(
            "While the pool cannot store (disk full), capture pauses and one frame this often "
            "tries again; the first one stored resumes capture.",
            min=0.05,
        ),
    )
    synchronous: Literal["NORMAL", "FULL"] = field(
        default="NORMAL",
        metadata=doc(
            "SQLite synchronous mode: NORMAL never corrupts in WAL mode but may lose the last "
            "commits at a power cut; FULL keeps them at an fsync per commit."
        ),
    )


@dataclass(frozen=True)
class ScoringConfig:
    method: str = field(
        default="margin", metadata=doc("Per-detection score: margin, entropy or least_confidence.")
    )
    aggregate: str = field(
        default="sum", metadata=doc("Image score from its detections: sum (paper), max or mean.")
    )

    def __post_init__(self) -> None:
        for name, table, what in (
            (self.method, METHODS, "method"),
            (self.aggregate, AGGREGATES, "aggregate"),
        ):
            if name not in table:
                raise ValueError(f"{what} {name!r} is not one of {', '.join(sorted(table))}")


@dataclass(frozen=True)
class QueryConfig:
    """The query settings: the config gives the start, set_query commands change them (a copy
    through `changed`, checked like the file). The bounds are the wire contract's (dal.link
    messages), so no accepted value can overflow a cycle."""

    strategy: str = field(
        default="dbal", metadata=doc("Query strategy: random, margin, dbal or coreset.")
    )
    k: int = field(default=25, metadata=doc("Images chosen per cycle.", min=1, max=QUERY_K_MAX))
    beta: float = field(
        default=2.0,
        metadata=doc(
            "DBAL pre-filter: the top beta·k images are clustered.", min=1.0, max=QUERY_BETA_MAX
        ),
    )
    seed: int = field(
        default=0,
        metadata=doc("Random seed of the strategy (cycle number is added).", min=0, max=SEED_MAX),
    )
    allow_labelled: bool = field(
        default=False, metadata=doc("Let already labelled images be chosen again.")
    )

    def __post_init__(self) -> None:
        if not isinstance(self.strategy, str) or self.strategy not in STRATEGIES:
            raise ConfigError(
                f"unknown query strategy {self.strategy!r}",
                hint=f"choose one of {', '.join(sorted(STRATEGIES))}",
            )
        _check_number("k", self.k, int, 1, QUERY_K_MAX)
        _check_number("beta", self.beta, float, 1.0, QUERY_BETA_MAX, hint="the paper uses β = 2")
        _check_number("seed", self.seed, int, 0, SEED_MAX)
        if not isinstance(self.allow_labelled, bool):
            raise ConfigError(f"allow_labelled must be true or false, got {self.allow_labelled!r}")

    def changed(self, **params: Any) -> QueryConfig:
        """A copy with the given non-None fields replaced (and checked)."""
        return replace(self, **{k: v for k, v in params.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _check_number(
    name: str, value: Any, kind: type, low: float, high: float, hint: str | None = None
) -> None:
    """A query number of the right type (no bool), finite and within [low, high]."""
    ok_type = isinstance(value, int) if kind is int else isinstance(value, int | float)
    if isinstance(value, bool) or not ok_type:
        raise ConfigError(
            f"{name} must be {'an integer' if kind is int else 'a number'}, got {value!r}"
        )
    if not (math.isfinite(value) and low <= value <= high):
        raise ConfigError(f"{name} must be in {low:g}..{high:g}, got {value!r}", hint=hint)


@dataclass(frozen=True)
class CycleConfig:
    pool_growth: int = field(
        default=200,
        metadata=doc("Start a cycle after this many new pooled images (0 = off).", min=0),
    )
    interval_s: float = field(
        default=0.0, metadata=doc("Start a cycle this often (0 = off).", min=0.0)
    )
    on_drift: bool = field(default=True, metadata=doc("Start a cycle when drift is detected."))
    min_pool: int = field(
        default=25, metadata=doc("Never start a cycle with fewer pooled images than this.", min=1)
    )


@dataclass(frozen=True)
class LinkSection:
    enabled: bool = field(
        default=True,
        metadata=doc(
            "Connect to the broker ([mqtt]); false = offline: the pool and cycles run, the "
            "outbox keeps every selected sample until the link is enabled."
        ),
    )
    ack_timeout_s: float = field(
        default=30.0,
        metadata=doc("Send a sample again when the trainer's ack takes longer.", min=0.1),
    )
    attempts: int = field(
        default=3,
        metadata=doc("Sends of one sample per round before moving on (it stays queued).", min=1),
    )
    retry_max_s: float = field(
        default=60.0,
        metadata=doc("Longest pause between shipping rounds while samples fail.", min=0.1),
    )
    window: int = field(
        default=8, metadata=doc("Chunks of one sample in flight at a time.", min=1, max=64)
    )
    status_interval_s: float = field(
        default=30.0,
        metadata=doc("Publish the retained status this often (and on every change).", min=1.0),
    )
    metrics_interval_s: float = field(
        default=10.0, metadata=doc("Publish metrics this often.", min=0.5)
    )


@dataclass(frozen=True)
class UpdateConfig:
    enabled: bool = field(
        default=True, metadata=doc("Follow the trainer's model manifest and install new models.")
    )
    public_key: Path | None = field(
        default=None,
        metadata=doc(
            "The trainer's Ed25519 public key (PEM) that every model must be signed with; "
            "unset = pushed models are refused."
        ),
    )
    smoke_images: int = field(
        default=8,
        metadata=doc(
            "Pooled images a new model must run on sanely before it is swapped in.", min=1
        ),
    )
    max_latency_s: float = field(
        default=5.0,
        metadata=doc("Refuse a new model whose median smoke-test latency exceeds this.", min=0.01),
    )
    probation_frames: int = field(
        default=20,
        metadata=doc(
            "Inferences after a swap during which a model failure rolls back to the previous "
            "model (0 = no probation).",
            min=0,
        ),
    )
    keep_previous: int = field(
        default=2,
        metadata=doc("Earlier model files kept on disk besides the current one.", min=1),
    )
    max_model_mb: int = field(
        default=2048, metadata=doc("Refuse manifests announcing a larger model.", min=1)
    )


@dataclass(frozen=True)
class SupervisorConfig:
    check_s: float = field(
        default=0.5,
        metadata=doc("How often the supervisor checks workers and reports.", min=0.05),
    )
    stall_s: float = field(
        default=120.0,
        metadata=doc(
            "A worker silent for this long counts as stuck: systemd's watchdog is no longer fed.",
            min=1.0,
        ),
    )
    max_restarts: int = field(
        default=5,
        metadata=doc(
            "A crashed worker is restarted at most this often per restart_window_s; then the "
            "agent exits with an error (systemd restarts it).",
            min=0,
        ),
    )
    restart_window_s: float = field(
        default=600.0, metadata=doc("Window of the restart limit.", min=1.0)
    )
    status_file_s: float = field(
        default=2.0,
        metadata=doc(
            "Rewrite data_dir/status.json (read by `dal agent status`) this often.", min=0.1
        ),
    )


@dataclass(frozen=True)
class AgentConfig:
    ENV_PREFIX: ClassVar[str] = "DAL_AGENT"
    TITLE: ClassVar[str] = "dal edge agent configuration (dal agent run --config FILE)."

    agent: AgentSection = field(
        default_factory=AgentSection, metadata=doc("Identity and storage of this agent.")
    )
    source: SourceConfig = field(
        default_factory=SourceConfig, metadata=doc("Where frames come from.")
    )
    detector: DetectorConfig = field(
        default_factory=DetectorConfig, metadata=doc("The ONNX detector and how it runs.")
    )
    policy: PolicyConfig = field(
        default_factory=PolicyConfig, metadata=doc("Which frames are kept for the pool.")
    )
    drift: DriftConfig = field(
        default_factory=DriftConfig, metadata=doc("Drift of score and feature statistics.")
    )
    pool: PoolConfig = field(
        default_factory=PoolConfig, metadata=doc("The candidate pool on disk.")
    )
    scoring: ScoringConfig = field(
        default_factory=ScoringConfig, metadata=doc("Informativeness score of an image.")
    )
    query: QueryConfig = field(
        default_factory=QueryConfig, metadata=doc("On-device query: which images go to labelling.")
    )
    cycle: CycleConfig = field(
        default_factory=CycleConfig, metadata=doc("When an active-learning cycle starts.")
    )
    mqtt: MqttSection = field(
        default_factory=MqttSection,
        metadata=doc("The MQTT broker; agents log in with their agent id as user name."),
    )
    link: LinkSection = field(
        default_factory=LinkSection, metadata=doc("How samples and reports use the link.")
    )
    update: UpdateConfig = field(
        default_factory=UpdateConfig,
        metadata=doc("Model updates from the trainer: verification, smoke test, swap, rollback."),
    )
    supervisor: SupervisorConfig = field(
        default_factory=SupervisorConfig,
        metadata=doc("Worker supervision, systemd watchdog and the status file."),
    )
    metrics: MetricsSection = field(
        default_factory=MetricsSection,
        metadata=doc("Prometheus metrics over HTTP (docs/metrics.md)."),
    )
    homeassistant: HomeAssistantSection = field(
        default_factory=HomeAssistantSection,
        metadata=doc("Home Assistant MQTT discovery of the agent's status (docs/metrics.md)."),
    )


def load_agent_config(
    path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> AgentConfig:
    """Defaults <- TOML file <- DAL_AGENT__SECTION__KEY environment variables."""
    return cfg.load(AgentConfig, path, env=env)


def resolve_path(config: AgentConfig, path: Path) -> Path:
    """A configured path; relative ones live under `[agent] data_dir`."""
    return path if path.is_absolute() else config.agent.data_dir / path


def agent_id(config: AgentConfig) -> str:
    """`[agent] id`, or the host name when it is empty; checked to be a valid topic level."""
    from dal.link.topics import check_agent_id

    name = config.agent.id or socket.gethostname().split(".")[0]
    try:
        return check_agent_id(name)
    except LinkError as err:
        raise ConfigError(f"[agent] id {name!r} cannot be an agent id", hint=err.hint) from None

"""The trainer service's configuration: one frozen dataclass per TOML section.

Read once with `load_trainer_config`; nothing mutates it afterwards (the current model, label
counts and agent states live in the store and the registry). The reference file
docs/config/trainer.toml is generated from these classes (`python -m dal.config
dal.trainer.config:TrainerConfig`) and a test keeps it current.

Relative paths are resolved against `[trainer] data_dir` by `resolve_path`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

from dal import config as cfg
from dal.config import doc
from dal.link.settings import MqttSection
from dal.metrics_http import TrainerMetricsSection


@dataclass(frozen=True)
class TrainerSection:
    id: str = field(
        default="trainer",
        metadata=doc("MQTT client id (and broker user name when the ACL is used)."),
    )
    data_dir: Path = field(
        default=Path("/var/lib/dal-trainer"),
        metadata=doc(
            "Folder for samples, models, keys and jobs; relative paths elsewhere are resolved here."
        ),
    )
    status_interval_s: float = field(
        default=30.0,
        metadata=doc(
            "Publish the retained trainer status at least this often (and on every change).",
            min=1.0,
        ),
    )


@dataclass(frozen=True)
class IngestSection:
    dir: Path = field(
        default=Path("samples"),
        metadata=doc("Folder of the sample database (samples.db) and image files."),
    )
    spool_dir: Path = field(
        default=Path("spool"),
        metadata=doc("Folder for transfers being assembled (emptied at start-up)."),
    )
    max_sample_mib: int = field(
        default=64, metadata=doc("Refuse (ack 'rejected') samples larger than this.", min=1)
    )
    stale_after_s: float = field(
        default=600.0,
        metadata=doc("Drop a partial transfer that got no chunk for this long.", min=1.0),
    )
    max_transfers_per_agent: int = field(
        default=32,
        metadata=doc(
            "Unfinished transfers one agent may have at once; more are refused until one "
            "completes or expires (so no agent can stop ingest for the others).",
            min=1,
        ),
    )
    headerless_after_s: float = field(
        default=10.0,
        metadata=doc(
            "Drop chunks whose transfer header has not come within this long (a real header "
            "follows within moments; only 4 such transfers per agent are kept at all).",
            min=0.1,
        ),
    )
    synchronous: Literal["FULL", "EXTRA"] = field(
        default="FULL",
        metadata=doc(
            "SQLite synchronous mode. A sample is acked only after its commit, so the commit "
            "must reach the disk: FULL (or EXTRA) fsyncs the WAL on every commit."
        ),
    )


@dataclass(frozen=True)
class LabelsSection:
    oracle: Path | None = field(
        default=None,
        metadata=doc(
            "COCO file with ground truth for replayed recordings and experiments: samples "
            "matched to its images are labelled at once (see docs/trainer.md for the rule)."
        ),
    )
    oracle_images: Path | None = field(
        default=None,
        metadata=doc("Image folder of the oracle file (default: the file's folder)."),
    )
    oracle_max_pixel_diff: float = field(
        default=4.0,
        metadata=doc(
            "Last matching rule: a sample whose 32x32 grey thumbnail differs from a ground "
            "truth image's by at most this mean grey level (0-255) is that image (0 = off).",
            min=0.0,
        ),
    )


@dataclass(frozen=True)
class LabelStudioSection:
    enabled: bool = field(
        default=False,
        metadata=doc(
            "`dal trainer serve` also runs the Label Studio ML backend (/predict, /webhook)."
        ),
    )
    host: str = field(
        default="127.0.0.1",
        metadata=doc("Address the ML backend binds; anything but loopback needs basic auth."),
    )
    port: int = field(default=9090, metadata=doc("Its port (0 = any free one).", min=0, max=65535))
    public_url: str = field(
        default="",
        metadata=doc(
            "Base URL Label Studio reaches this backend at, for the image URLs of "
            "`dal label export --format labelstudio --live` (default http://host:port)."
        ),
    )
    basic_auth_user: str = field(
        default="", metadata=doc("Basic-auth user Label Studio sends (Model settings).")
    )
    basic_auth_pass_file: Path | None = field(
        default=None,
        metadata=doc("File holding its password (mode 0600); both or neither are set."),
    )
    min_score: float = field(
        default=0.3,
        metadata=doc(
            "Pre-annotations keep the model's boxes scoring at least this.", min=0.0, max=1.0
        ),
    )
    max_body_mib: int = field(
        default=10, metadata=doc("Refuse (413) request bodies larger than this.", min=1, max=256)
    )


@dataclass(frozen=True)
class FinetuneSection:
    auto: bool = field(
        default=True, metadata=doc("Start a fine-tune job by itself when new labels arrive.")
    )
    min_new_labels: int = field(
        default=1,
        metadata=doc(
            "New or changed labels since the last job that start an automatic one.", min=1
        ),
    )
    settle_s: float = field(
        default=30.0,
        metadata=doc(
            "Wait until no label arrived for this long, so one import starts one job.", min=0.0
        ),
    )
    val: Path | None = field(
        default=None,
        metadata=doc(
            "Fixed validation COCO file (real images). Every candidate and the current model "
            "are evaluated on it; without it no job runs."
        ),
    )
    val_images: Path | None = field(
        default=None, metadata=doc("Image folder of the validation file (default: its folder).")
    )
    synthetic: Path | None = field(
        default=None,
        metadata=doc("Synthetic COCO set to mix into every fine-tune (optional)."),
    )
    synthetic_images: Path | None = field(
        default=None, metadata=doc("Image folder of the synthetic set (default: its folder).")
    )
    tolerance: float = field(
        default=0.0,
        metadata=doc(
            "Promote a candidate only if its AP ≥ the current model's AP - margin; the margin "
            "is the larger of this (AP points) and relative_tolerance times the current AP.",
            min=0.0,
        ),
    )
    relative_tolerance: float = field(
        default=0.0,
        metadata=doc(
            "Margin of the promotion gate as a fraction of the current AP (0.05 = 5 %): it "
            "scales with the model, unlike a fixed tolerance.",
            min=0.0,
            max=1.0,
        ),
    )
    device: str = field(
        default="auto",
        metadata=doc("Where jobs train: auto (CUDA when present, else CPU), cpu, cuda or cuda:N."),
    )
    amp: Literal["auto", "on", "off"] = field(
        default="auto",
        metadata=doc(
            "Mixed precision: auto (on with CUDA, off on a CPU), on (bf16 on a CPU only where it "
            "has AVX512-BF16/AMX) or off."
        ),
    )
    epochs: int = field(
        default=10,
        metadata=doc(
            "Epochs over the labelled set per job (the budget grows with the labels), raised "
            "to reach min_steps; early stop may end it sooner.",
            min=1,
        ),
    )
    min_steps: int = field(
        default=60,
        metadata=doc("Fewest SGD steps per job, however few labels there are.", min=0),
    )
    patience: int = field(
        default=3, metadata=doc("Stop after this many epochs without a validation gain.", min=1)
    )
    batch_size: int = field(default=4, metadata=doc("Images per step.", min=1))
    lr: float = field(
        default=0.0,
        metadata=doc("Learning rate (0 = the trainer's fine-tuning default).", min=0.0),
    )
    max_steps_per_epoch: int = field(
        default=0, metadata=doc("Cap on steps per epoch (0 = the whole set).", min=0)
    )
    augment: bool = field(
        default=True, metadata=doc("Flip, colour jitter, noise, blur, shift-scale (the paper's).")
    )
    seed: int = field(default=0, metadata=doc("Random seed of the job."))
    threads: int = field(default=0, metadata=doc("torch CPU threads (0 = all cores).", min=0))
    workers: int = field(default=0, metadata=doc("Data loader processes.", min=0))
    verify_images: int = field(
        default=4,
        metadata=doc("Validation images used for the torch/onnxruntime parity check.", min=1),
    )

    def __post_init__(self) -> None:
        from dal.trainer.device import parse_device

        parse_device(self.device)  # a ConfigError naming the value, at start-up


@dataclass(frozen=True)
class ModelsSection:
    dir: Path = field(
        default=Path("models"),
        metadata=doc("Folder of the model registry (registry.db), checkpoints and ONNX files."),
    )
    initial_checkpoint: Path | None = field(
        default=None,
        metadata=doc(
            "Checkpoint (.pt from `dal train`) registered as the current model when the "
            "registry is empty, e.g. the synthetic base model M0."
        ),
    )
    private_key: Path = field(
        default=Path("keys/model-signing.key"),
        metadata=doc("Ed25519 private key that signs models (`dal keys generate`), mode 0600."),
    )
    public_key: Path = field(
        default=Path("keys/model-signing.pub"),
        metadata=doc("Its public key: copy this one to every agent."),
    )


@dataclass(frozen=True)
class TrainerConfig:
    ENV_PREFIX: ClassVar[str] = "DAL_TRAINER"
    TITLE: ClassVar[str] = "dal trainer service configuration (dal trainer serve --config FILE)."

    trainer: TrainerSection = field(
        default_factory=TrainerSection, metadata=doc("Identity and storage of the trainer.")
    )
    mqtt: MqttSection = field(
        default_factory=MqttSection, metadata=doc("The broker shared with the agents.")
    )
    ingest: IngestSection = field(
        default_factory=IngestSection, metadata=doc("Receiving samples from the agents.")
    )
    labels: LabelsSection = field(
        default_factory=LabelsSection, metadata=doc("Labelling: the ground-truth oracle.")
    )
    labelstudio: LabelStudioSection = field(
        default_factory=LabelStudioSection,
        metadata=doc("Label Studio ML backend: live pre-annotations and labels by webhook."),
    )
    finetune: FinetuneSection = field(
        default_factory=FinetuneSection,
        metadata=doc("The fine-tune job: data, training, the promotion gate."),
    )
    models: ModelsSection = field(
        default_factory=ModelsSection, metadata=doc("Model registry and signing keys.")
    )
    metrics: TrainerMetricsSection = field(
        default_factory=TrainerMetricsSection,
        metadata=doc("Prometheus metrics over HTTP (docs/metrics.md)."),
    )


def load_trainer_config(
    path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> TrainerConfig:
    """Defaults <- TOML file <- DAL_TRAINER__SECTION__KEY environment variables."""
    return cfg.load(TrainerConfig, path, env=env)


def resolve_path(config: TrainerConfig, path: Path) -> Path:
    """A configured path; relative ones live under `[trainer] data_dir`."""
    return path if path.is_absolute() else config.trainer.data_dir / path


def optional_path(config: TrainerConfig, path: Path | None) -> Path | None:
    return None if path is None else resolve_path(config, path)

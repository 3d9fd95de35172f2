"""One error hierarchy for every runtime failure a user can cause or fix.

The CLI prints a DalError as one line (plus its hint) and exits non-zero; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations


class DalError(Exception):
    """A failure the user can act on; `hint` says what to do next."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint

    def __str__(self) -> str:
        text = super().__str__()
        return f"{text} ({self.hint})" if self.hint else text


class DatasetError(DalError):
    """A dataset file (COCO JSON, image, label file) is missing or malformed."""


class ModelError(DalError):
    """A checkpoint or ONNX model is missing, corrupt or does not fit the task."""


class ConfigError(DalError):
    """A configuration file or option is invalid."""


class DependencyError(DalError):
    """An optional dependency (bpy, pyk4a, a broker) is not installed."""


class SourceError(DalError):
    """A frame source (camera, recording, folder, stream) cannot be opened or read."""


class LinkError(DalError):
    """The MQTT link failed or a message broke the wire contract."""


class StorageError(DalError):
    """The pool, outbox or model store cannot be written (disk full, permissions)."""

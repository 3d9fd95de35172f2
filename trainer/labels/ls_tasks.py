"""What the ML backend's handlers share: the 4xx error, field checks, a task's sample, and the
project's interface (from the request, the project's /setup, or the export's default)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from dal.errors import DatasetError
from dal.trainer.labels.documents import labelstudio_config
from dal.trainer.labels.ls_config import ProjectInterface, parse_label_config
from dal.trainer.labels.ls_images import url_file_name
from dal.trainer.labels.readers import SampleIndex
from dal.trainer.store import Sample, SampleStore

MAX_TASKS = 1000  # per /predict or /train request; Label Studio sends far smaller batches
MAX_ID_CHARS = 64


class RequestError(Exception):
    """A request the backend refuses: HTTP status and a message that says what to fix."""

    def __init__(self, status: int, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.hint = hint

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"status": "error", "error": self.message}
        if self.hint:
            body["hint"] = self.hint
        return body


def bad(message: str, hint: str | None = None) -> RequestError:
    return RequestError(400, message, hint)


def need_dict(value: Any, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise bad(f"{field}: expected an object, got {type(value).__name__}")
    return value


def need_list(value: Any, field: str, limit: int = MAX_TASKS) -> list[Any]:
    if not isinstance(value, list):
        raise bad(f"{field}: expected a list, got {type(value).__name__}")
    if len(value) > limit:
        raise bad(f"{field}: {len(value)} entries, more than {limit}", hint="send smaller batches")
    return value


def project_id(value: Any) -> str:
    """Label Studio's project: '12.1700000000' (id.created) in /setup and /predict, an object
    with `id` in webhooks; '' when absent."""
    if isinstance(value, dict):
        value = value.get("id", "")
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise bad(f"project: expected an id, got {type(value).__name__}")
    text = str(value).split(".", 1)[0]
    ok = len(text) <= MAX_ID_CHARS and all(c.isalnum() or c in "-_" for c in text)
    if not ok:
        raise bad(f"project: {str(value)[:MAX_ID_CHARS]!r} is not a Label Studio project id")
    return text


class Interfaces:
    """Parsed label configs: per project from /setup, and by text (Label Studio sends the
    config with every /predict and webhook; parsing it once per model is enough)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_project: dict[str, str] = {}
        self._parsed: dict[tuple[str, tuple[str, ...]], ProjectInterface] = {}

    def remember(self, project: str, text: str) -> None:
        with self._lock:
            self._by_project[project] = text

    def get(self, text: Any, project: str, class_names: Sequence[str]) -> ProjectInterface:
        if text is None or text == "":
            with self._lock:
                text = self._by_project.get(project) or labelstudio_config(class_names)
        if not isinstance(text, str):
            raise bad(f"label_config: expected the XML text, got {type(text).__name__}")
        key = (text, tuple(class_names))
        with self._lock:
            if key in self._parsed:
                return self._parsed[key]
        try:
            interface = parse_label_config(text, class_names)
        except DatasetError as err:
            raise bad(str(err.args[0]), err.hint) from None
        with self._lock:
            if len(self._parsed) > 64:  # a few projects and models; never unbounded
                self._parsed.clear()
            self._parsed[key] = interface
        return interface


def task_sample(
    task: Any, field: str, interface: ProjectInterface, store: SampleStore
) -> tuple[Sample, str]:
    """The stored sample a task shows (by `data.dal_sample_id`, else by the image's file
    name, as the file import finds it) and the image URL; unknown tasks are a 404."""
    task = need_dict(task, field)
    data = need_dict(task.get("data"), f"{field}.data")
    url = data.get(interface.data_key)
    if not isinstance(url, str) or not url or len(url) > 4096:
        raise bad(f"{field}.data.{interface.data_key}: missing or not an image URL")
    sample_id = data.get("dal_sample_id")
    sample = store.get(sample_id) if isinstance(sample_id, str) else None
    if sample is None:
        sample = SampleIndex(store).find(None, url_file_name(url))
    if sample is None:
        raise RequestError(
            404,
            f"{field}: task {task.get('id')!r} ({url[:200]!r}) is no sample of this trainer",
            hint="import tasks made by `dal label export --format labelstudio`",
        )
    if not sample.width or not sample.height:
        raise RequestError(422, f"{field}: sample {sample.sample_id} has no known image size")
    return sample, url

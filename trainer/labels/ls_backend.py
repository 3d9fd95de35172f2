"""Label Studio's ML backend protocol, as handlers of parsed JSON bodies (no HTTP here).

    GET  /health, /    {"status": "UP", "model_class", "model_version"}
    POST /setup        {project, schema, ...}               -> {"model_version"}
    POST /predict      {tasks, label_config, project, params} -> {"results": [...], "model_version"}
    POST /webhook      {action, annotation, task, project}  -> 201 {"status": "ok", "result"}
    POST /train        {annotations: tasks, project, label_config} -> 201 {"job"}

Predictions are the current model's boxes in percent of the image, named after the project's
RectangleLabels/Image tags and labels. Webhook annotations become labels in the sample store
by the file import's reader; each request is checked whole before anything is stored.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from dal.errors import DalError
from dal.trainer.labels.documents import ls_region
from dal.trainer.labels.ls_annotations import (
    SOURCE,
    annotation_label,
    annotation_source,
    pair_annotations,
)
from dal.trainer.labels.ls_config import ProjectInterface
from dal.trainer.labels.ls_model import Boxes, CurrentModel
from dal.trainer.labels.ls_tasks import (
    Interfaces,
    RequestError,
    bad,
    need_dict,
    need_list,
    project_id,
    task_sample,
)
from dal.trainer.store import Label, SampleStore

logger = logging.getLogger(__name__)

MODEL_CLASS = "dal"
SAVE_EVENTS = ("ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED")
DELETE_EVENTS = ("ANNOTATIONS_DELETED", "ANNOTATION_DELETED")
TRAIN_EVENTS = ("START_TRAINING",)

Reply = tuple[int, Any]


def predicted_regions(
    found: Boxes, interface: ProjectInterface, width: int, height: int
) -> list[dict[str, Any]]:
    """The model's boxes as the project's rectanglelabels regions, clipped to the image."""
    regions: list[dict[str, Any]] = []
    for box, name, score in zip(found.boxes, found.classes, found.scores, strict=True):
        x1, y1 = max(0.0, float(box[0])), max(0.0, float(box[1]))
        x2, y2 = min(float(width), float(box[2])), min(float(height), float(box[3]))
        if name not in interface.to_ls or x2 <= x1 or y2 <= y1:
            continue  # a class the project does not label, or a box off the image
        label = interface.to_ls[name]
        score = round(float(score), 5)
        regions.append(
            ls_region(
                (x1, y1, x2, y2),
                label,
                width,
                height,
                len(regions),
                score,
                interface.from_name,
                interface.to_name,
            )
        )
    return regions


class LabelStudioBackend:
    """See the module docstring. `on_train` (the service's fine-tune request) runs on /train
    and START_TRAINING; without it a fine-tune starts when the labels settle."""

    def __init__(
        self,
        store: SampleStore,
        model: CurrentModel,
        min_score: float,
        on_train: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.model = model
        self.min_score = min_score
        self.on_train = on_train
        self.interfaces = Interfaces()

    def _classes(self) -> tuple[str, ...]:
        names = self.model.class_names()
        if not names:
            raise RequestError(
                503,
                "no current model: nothing to predict with and no classes to check labels against",
                hint="promote a model (`dal models promote`) or set [models] initial_checkpoint",
            )
        return names

    # -- model ---------------------------------------------------------------------------------

    def health(self) -> Reply:
        return 200, {
            "status": "UP",
            "model_class": MODEL_CLASS,
            "model_version": self.model.version(),
        }

    def setup(self, body: Any) -> Reply:
        body = need_dict(body, "body")
        project = project_id(body.get("project"))
        schema = body.get("schema")
        self.interfaces.get(schema, project, self._classes())  # 400 now, not at every predict
        if isinstance(schema, str):
            self.interfaces.remember(project, schema)
        return 200, {"model_version": self.model.version()}

    def predict(self, body: Any) -> Reply:
        body = need_dict(body, "body")
        project = project_id(body.get("project"))
        interface = self.interfaces.get(body.get("label_config"), project, self._classes())
        tasks = need_list(body.get("tasks"), "tasks")
        samples = [
            task_sample(t, f"tasks[{i}]", interface, self.store) for i, t in enumerate(tasks)
        ]
        results, version = [], self.model.version()
        for sample, _url in samples:
            try:
                found = self.model.detect(sample.path, self.min_score)
            except DalError as err:
                raise RequestError(503, str(err.args[0]), err.hint) from None
            version = found.version
            regions = predicted_regions(found, interface, int(sample.width), int(sample.height))
            score = max((r["score"] for r in regions), default=0.0)
            results.append({"result": regions, "score": score, "model_version": version})
        return 200, {"results": results, "model_version": version}

    # -- labels --------------------------------------------------------------------------------

    def _labels(
        self, pairs: list[tuple[Any, Any]], project: str, config: Any, field: str
    ) -> tuple[dict[str, Label], list[str]]:
        """Every pair checked first: (labels to store by sample id, sample ids skipped)."""
        classes = self._classes()
        interface = self.interfaces.get(config, project, classes)
        labels: dict[str, Label] = {}
        skipped: list[str] = []
        for i, (annotation, task) in enumerate(pairs):
            where = f"{field}[{i}]" if len(pairs) > 1 else field
            sample_id, label = annotation_label(
                annotation, task, where, project, interface, self.store, classes
            )
            if label is None:
                skipped.append(sample_id)
            else:
                labels[sample_id] = label  # the latest annotation of a task wins
        return labels, skipped

    def _store(self, labels: dict[str, Label], skipped: list[str], project: str) -> dict[str, Any]:
        """One transaction for all labels of the request, so a batch is all or nothing."""
        revision = self.store.set_labels(labels.values()) if labels else self.store.label_revision()
        cancelled = self._cancelled(skipped, project)
        if labels:
            logger.info("Label Studio: stored labels of %s (revision %d)", list(labels), revision)
        return {
            "stored": sorted(labels),
            "skipped": skipped,
            "cleared": cancelled,
            "revision": revision,
        }

    def _cancelled(self, sample_ids: list[str], project: str) -> list[str]:
        """A skipped annotation that replaced this project's label of a sample removes it."""
        prefix = f"{SOURCE}:{project}:"
        gone = [
            sid
            for sid in sample_ids
            if (label := self.store.label(sid)) is not None and label.source.startswith(prefix)
        ]
        if gone:
            self.store.clear_labels(gone)
        return gone

    def _delete(self, body: dict[str, Any], project: str) -> list[str]:
        ids = set()
        for i, ann in enumerate(need_list(body.get("annotations"), "annotations")):
            ann_id = need_dict(ann, f"annotations[{i}]").get("id")
            if isinstance(ann_id, bool) or not isinstance(ann_id, int | str):
                raise bad(f"annotations[{i}].id: expected an id, got {ann_id!r}")
            ids.add(annotation_source(project, ann_id))
        gone = [sid for sid, label in self.store.labels().items() if label.source in ids]
        if gone:
            self.store.clear_labels(gone)
            logger.info("Label Studio: annotations deleted, cleared labels of %s", gone)
        return gone

    def webhook(self, body: Any) -> Reply:
        body = need_dict(body, "body")
        action = body.get("action")
        if not isinstance(action, str):
            raise bad("action: missing (a Label Studio webhook names its action)")
        project_field = body.get("project")
        project = project_id(project_field)
        if action in SAVE_EVENTS:
            config = project_field.get("label_config") if isinstance(project_field, dict) else None
            labels, skipped = self._labels(pair_annotations(body), project, config, "annotation")
            return 201, {"status": "ok", "result": self._store(labels, skipped, project)}
        if action in DELETE_EVENTS:
            return 201, {"status": "ok", "result": {"cleared": self._delete(body, project)}}
        if action in TRAIN_EVENTS:
            return 201, {"status": "ok", "result": self._train_now()}
        return 200, {"status": "Unknown event"}

    def train(self, body: Any) -> Reply:
        """The older /train: every annotated task of the project, as a JSON export holds them."""
        body = need_dict(body, "body")
        project = project_id(body.get("project"))
        tasks = need_list(body.get("annotations"), "annotations")
        if not tasks:
            raise bad("annotations: no annotated tasks sent")
        pairs = []
        for i, task in enumerate(tasks):
            task = need_dict(task, f"annotations[{i}]")
            done = [
                a
                for a in need_list(task.get("annotations", []), f"annotations[{i}].annotations")
                if isinstance(a, dict) and not a.get("was_cancelled", False)
            ]
            if done:
                pairs.append((done[-1], task))
        labels, skipped = self._labels(pairs, project, body.get("label_config"), "annotations")
        stored = self._store(labels, skipped, project)
        return 201, {"job": f"labels-{stored['revision']}", **stored, "train": self._train_now()}

    def _train_now(self) -> str:
        if self.on_train is None:
            return "labels stored; a fine-tune starts once they settle ([finetune] auto)"
        self.on_train()
        return "fine-tune requested"

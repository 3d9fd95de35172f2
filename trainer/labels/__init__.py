"""Labels in and out of the sample store: COCO, CVAT "COCO 1.0", Label Studio; the oracle.

One job per module:

    documents  what an export file holds: the COCO dict and the Label Studio tasks and config
    export     `export_labels`: pick samples from the store, place their images, write the file
    readers    a tool's document -> checked `Label`s, with the field at fault when it is wrong
    importer   `read_labels` / `import_labels`: a file (JSON or zip) in, its format, the store
    oracle     `GroundTruthOracle`: labels replayed samples from a ground-truth COCO file

Label Studio's ML backend (`dal label serve`, docs/labelling.md), one job per module too:

    ls_config       the project's label config XML: RectangleLabels/Image names, label maps
    ls_images       the /data image URLs (per-image tokens) and the file name in a task URL
    ls_tasks        the 4xx error, field checks, a task's sample, the parsed-config cache
    ls_model        the registry's current ONNX model through the agent's Detector
    ls_annotations  webhook annotations -> `Label`s through `readers.read_labelstudio`
    ls_backend      the protocol's handlers on parsed JSON (health, setup, predict, webhook)
    ls_server       HTTP: routes, basic auth, body limit, the server's thread

Export writes a folder a labelling tool can take:

    coco         annotations.json (+ images/); the image key `dal_sample_id` names the sample
    cvat         annotations.zip holding annotations/instances_default.json, CVAT's "COCO 1.0"
                 layout (+ images/ to create the task from)
    labelstudio  tasks.json for Label Studio's import (`data.image`, `data.dal_sample_id`, the
                 labels as `annotations`, the model's detections as `predictions`) and
                 label_config.xml for the project

Each exported image is named `<agent>__<name>.<ext>` after its sample id, so an import finds
the sample by `dal_sample_id` when the tool kept it, else by that file name. In COCO and CVAT
files every image counts as labelled (no boxes = "no object in it"), except images that still
carry `"dal_labelled": false` from the export (a tool that keeps unknown keys and nobody
touched them); CVAT drops that key, so export for CVAT only what will be labelled.

Import reads what the tools give back (a COCO or CVAT JSON or zip, a Label Studio JSON export),
checks all of it first and writes nothing unless the whole file is good: a malformed file is
refused with the file and the line (JSON syntax) or field (`annotations[3].bbox`,
`[2].annotations[0].result[1].value.width`) at fault. Boxes become x1, y1, x2, y2 image pixels
and classes are stored by name; a name that is not one of the model's classes is refused.

This file holds only what export, import and the oracle share, so that none of them imports
another: the format names, where a CVAT zip keeps its JSON, and a COCO image as label boxes.
"""

from __future__ import annotations

import numpy as np

from dal.coco import CocoDataset, ImageRecord

FORMATS = ("coco", "cvat", "labelstudio")
CVAT_JSON = "annotations/instances_default.json"  # export writes it, import looks for it first


def record_boxes(coco: CocoDataset, rec: ImageRecord) -> tuple[np.ndarray, tuple[str, ...]]:
    """A COCO image's boxes (float64 [n, 4] x1, y1, x2, y2) and class names, as Labels hold
    them: the one conversion a label file and the oracle's ground truth both go through."""
    boxes = np.asarray(rec.boxes, dtype=np.float64).reshape(-1, 4)
    return boxes, tuple(coco.categories[int(c)] for c in rec.category_ids)

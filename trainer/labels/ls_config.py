"""A Label Studio project's labelling interface (its label config XML), as the ML backend needs it.

Predictions must name the project's own tags (`from_name` = the RectangleLabels tag, `to_name`
= the Image it points at) and its own label values, and annotations come back in those values.
A `<Label value="Washer" predicted_values="washer"/>` maps a label to the model class of that
name (Label Studio's attribute for this); without it a label is the model class of its value.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass

from dal.errors import DatasetError

MAX_CONFIG_CHARS = 1 << 20  # real configs are a few kB; this keeps a hostile one small


@dataclass(frozen=True)
class ProjectInterface:
    """The one RectangleLabels-on-Image pair of a project and its label <-> class maps."""

    from_name: str
    to_name: str
    data_key: str  # the task data field the Image shows ("$image" -> "image")
    to_model: dict[str, str]  # Label Studio label value -> model class name
    to_ls: dict[str, str]  # model class name -> Label Studio label value

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.to_model)


def _refuse(problem: str) -> DatasetError:
    return DatasetError(
        f"label config: {problem}",
        hint="use an Image tag and a RectangleLabels tag with toName pointing at it "
        "(`dal label export --format labelstudio` writes one in label_config.xml)",
    )


def _parse_xml(text: str) -> ET.Element:
    if not isinstance(text, str) or not text.strip():
        raise _refuse("missing (expected the project's label config XML)")
    if len(text) > MAX_CONFIG_CHARS:
        raise _refuse(f"{len(text)} characters, more than {MAX_CONFIG_CHARS}")
    if "<!DOCTYPE" in text.upper() or "<!ENTITY" in text.upper():
        raise _refuse("DOCTYPE and ENTITY declarations are not accepted")
    try:
        return ET.fromstring(text)
    except ET.ParseError as err:
        raise _refuse(f"not well-formed XML ({err})") from None


def _label_classes(label: ET.Element) -> list[str]:
    predicted = label.get("predicted_values")
    if predicted:
        return [v.strip() for v in predicted.split(",") if v.strip()]
    return [label.get("value", "")]


def parse_label_config(text: str, class_names: Sequence[str]) -> ProjectInterface:
    """The project's RectangleLabels/Image pair; every label must map to one model class."""
    root = _parse_xml(text)
    images = {el.get("name"): el for el in root.iter() if el.tag == "Image" and el.get("name")}
    pairs = [
        el
        for el in root.iter()
        if el.tag == "RectangleLabels" and el.get("name") and el.get("toName") in images
    ]
    if len(pairs) != 1:
        found = f"{len(pairs)} RectangleLabels tags on an Image" if pairs else "none"
        raise _refuse(f"expected one RectangleLabels tag whose toName is an Image, found {found}")
    tag = pairs[0]
    image = images[tag.get("toName")]
    value = image.get("value", "")
    if not value.startswith("$") or len(value) < 2:
        raise _refuse(f"Image {image.get('name')!r} value {value!r} is not a task field ($image)")
    to_model: dict[str, str] = {}
    to_ls: dict[str, str] = {}
    for label in tag.iter("Label"):
        name = label.get("value", "")
        classes = _label_classes(label)
        unknown = [c for c in classes if c not in class_names]
        if not name or unknown:
            raise DatasetError(
                f"label config: label {name!r} maps to {unknown or classes}, not one of the "
                f"model's classes {list(class_names)}",
                hint='rename the Label, or add predicted_values="<model class>" to it',
            )
        to_model[name] = classes[0]
        for c in classes:
            to_ls.setdefault(c, name)
    if not to_model:
        raise _refuse(f"RectangleLabels {tag.get('name')!r} has no Label")
    return ProjectInterface(tag.get("name"), image.get("name"), value[1:], to_model, to_ls)

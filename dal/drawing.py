"""Pictures for people: detections drawn on images, and contact sheets of many images.

Used for evaluation grids, render previews and the agent's selection sheets. PIL only, so the
agent can draw without torch or OpenCV.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Distinct, readable on grey and on photos; label l uses PALETTE[l % len(PALETTE)].
PALETTE: tuple[tuple[int, int, int], ...] = (
    (255, 56, 56),
    (56, 255, 120),
    (60, 140, 255),
    (255, 200, 20),
    (255, 80, 220),
    (0, 220, 220),
    (255, 140, 30),
    (170, 110, 255),
    (150, 255, 40),
    (255, 255, 255),
)
SINGLE_COLOUR = (0, 255, 0)
BACKGROUND_NAME = "__background__"


def _as_pil(image: Image.Image | np.ndarray) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    array = np.asarray(image)
    if array.dtype != np.uint8:
        array = np.clip(array, 0, 255).astype(np.uint8)
    return Image.fromarray(array).convert("RGB")


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: fixed-size bitmap font
        return ImageFont.load_default()


def _name(label: int, class_names: Sequence[str] | None) -> str:
    """class_names is either labels 1..C (CocoDataset.class_names) or starts with background
    (the ONNX metadata's list); both give the same name for a label."""
    if class_names is None:
        return str(label)
    names = list(class_names)
    if names and names[0] == BACKGROUND_NAME:
        names = names[1:]
    return names[label - 1] if 1 <= label <= len(names) else str(label)


def _text_colour(fill: tuple[int, int, int]) -> tuple[int, int, int]:
    luminance = 0.299 * fill[0] + 0.587 * fill[1] + 0.114 * fill[2]
    return (0, 0, 0) if luminance > 140 else (255, 255, 255)


def draw_detections(
    image: Image.Image | np.ndarray,
    boxes: np.ndarray | Sequence[Sequence[float]],
    labels: np.ndarray | Sequence[int],
    scores: Sequence[float] | None = None,
    class_names: Sequence[str] | None = None,
    color_by_label: bool = True,
) -> Image.Image:
    """A copy of the image with each box (x1, y1, x2, y2 pixels) outlined and captioned
    "name score"; the input is not modified."""
    canvas = _as_pil(image).copy()
    draw = ImageDraw.Draw(canvas)
    side = min(canvas.size)
    line = max(1, round(side / 240))
    font = _font(max(9, round(side / 36)))
    boxes_arr = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    labels_arr = np.asarray(labels).reshape(-1)
    for i, (x1, y1, x2, y2) in enumerate(boxes_arr):
        label = int(labels_arr[i])
        colour = PALETTE[label % len(PALETTE)] if color_by_label else SINGLE_COLOUR
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=line)
        text = _name(label, class_names)
        if scores is not None:
            text = f"{text} {float(scores[i]):.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left, bottom - top
        ty = y1 - th - 4 if y1 - th - 4 >= 0 else y1  # above the box, inside when no room
        draw.rectangle([x1, ty, x1 + tw + 4, ty + th + 4], fill=colour)
        draw.text((x1 + 2 - left, ty + 2 - top), text, fill=_text_colour(colour), font=font)
    return canvas


def contact_sheet(
    images: Sequence[Image.Image | np.ndarray],
    columns: int = 4,
    tile_width: int = 320,
    captions: Sequence[str] | None = None,
) -> Image.Image:
    """Images scaled to `tile_width` in a grid, each with an optional caption underneath."""
    if not images:
        raise ValueError("contact_sheet needs at least one image")
    if captions is not None and len(captions) != len(images):
        raise ValueError(f"{len(captions)} captions for {len(images)} images")
    tiles = []
    for image in images:
        pil = _as_pil(image)
        height = max(1, round(pil.height * tile_width / pil.width))
        tiles.append(pil.resize((tile_width, height), Image.Resampling.BILINEAR))
    font = _font(max(9, tile_width // 24))
    caption_h = 0
    if captions is not None:
        probe = ImageDraw.Draw(tiles[0])
        caption_h = max(probe.textbbox((0, 0), c or " ", font=font)[3] for c in captions) + 6
    gap = 4
    tile_h = max(t.height for t in tiles)
    columns = max(1, min(columns, len(tiles)))
    rows = math.ceil(len(tiles) / columns)
    sheet = Image.new(
        "RGB",
        (columns * (tile_width + gap) + gap, rows * (tile_h + caption_h + gap) + gap),
        (32, 32, 32),
    )
    draw = ImageDraw.Draw(sheet)
    for i, tile in enumerate(tiles):
        x = gap + (i % columns) * (tile_width + gap)
        y = gap + (i // columns) * (tile_h + caption_h + gap)
        sheet.paste(tile, (x, y + (tile_h - tile.height) // 2))
        if captions is not None and captions[i]:
            draw.text((x + 2, y + tile_h + 3), captions[i], fill=(235, 235, 235), font=font)
    return sheet

"""Detection overlays and contact sheets."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from dal.drawing import PALETTE, contact_sheet, draw_detections


def _grey(width: int = 200, height: int = 120) -> np.ndarray:
    return np.full((height, width, 3), 100, dtype=np.uint8)


def test_boxes_drawn_on_edges_only() -> None:
    image = _grey()
    out = np.asarray(
        draw_detections(image, [[50, 40, 150, 100]], [1], scores=[0.9], class_names=["washer"])
    )
    assert out.shape == image.shape
    assert (image == 100).all(), "the input must not be modified"
    # All four edges carry the label's colour...
    for y, x in [(70, 50), (70, 150), (100, 100), (40, 140)]:
        assert tuple(out[y, x]) == PALETTE[1], (y, x)
    # ...the inside of the box and the far corner stay untouched.
    assert (out[60:95, 60:140] == 100).all()
    assert (out[110:, :40] == 100).all()


def test_caption_drawn_above_box() -> None:
    plain = np.asarray(draw_detections(_grey(), [[50, 40, 150, 100]], [1]))
    named = np.asarray(
        draw_detections(
            _grey(), [[50, 40, 150, 100]], [1], scores=[0.5], class_names=["a_long_class_name"]
        )
    )
    above = (slice(0, 40), slice(50, 200))
    assert (plain[above] != 100).any() and (named[above] != 100).any()
    # A longer caption covers more of the strip above the box.
    assert (named[above] != 100).sum() > (plain[above] != 100).sum()


def test_background_first_names_match_plain_names() -> None:
    args = ([[10, 30, 60, 80], [100, 20, 190, 110]], [1, 2], [0.3, 0.8])
    plain = draw_detections(Image.fromarray(_grey()), *args, class_names=["nut", "washer"])
    with_bg = draw_detections(_grey(), *args, class_names=["__background__", "nut", "washer"])
    assert np.array_equal(np.asarray(plain), np.asarray(with_bg))


def test_single_colour_and_no_boxes() -> None:
    out = np.asarray(
        draw_detections(
            _grey(), [[20, 20, 80, 80], [100, 20, 180, 80]], [1, 2], color_by_label=False
        )
    )
    assert tuple(out[50, 20]) == tuple(out[50, 100])
    empty = draw_detections(_grey(), np.zeros((0, 4)), np.zeros(0, dtype=np.int64))
    assert (np.asarray(empty) == 100).all()


def test_contact_sheet_layout() -> None:
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]
    images = [Image.new("RGB", (200, 100), c) for c in colours]
    sheet = contact_sheet(images, columns=2, tile_width=100)
    assert sheet.size == (2 * 104 + 4, 3 * (50 + 4) + 4)
    # Image i sits in row i // 2, column i % 2.
    for i, colour in enumerate(colours):
        x = 4 + (i % 2) * 104 + 50
        y = 4 + (i // 2) * 54 + 25
        assert sheet.getpixel((x, y)) == colour
    captioned = contact_sheet(images, columns=2, tile_width=100, captions=list("abcde"))
    assert captioned.width == sheet.width and captioned.height > sheet.height


def test_contact_sheet_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="at least one image"):
        contact_sheet([])
    with pytest.raises(ValueError, match="2 captions for 1 images"):
        contact_sheet([_grey()], captions=["a", "b"])

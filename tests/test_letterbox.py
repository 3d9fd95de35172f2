"""dal/letterbox.py: frames of any size into the contract's fixed input, boxes back. Pure."""

from __future__ import annotations

import numpy as np
import pytest

from dal.letterbox import boxes_to_frame, boxes_to_input, fit_image, plan_fit


@pytest.mark.parametrize("mode", ["letterbox", "stretch"])
@pytest.mark.parametrize("frame", [(640, 480), (1280, 720), (320, 180), (300, 400), (160, 96)])
def test_box_mapping_round_trips(mode: str, frame: tuple[int, int]) -> None:
    fit = plan_fit(*frame, 640, 360, mode=mode)
    fw, fh = frame
    boxes = np.array([[0, 0, fw, fh], [0.1 * fw, 0.2 * fh, 0.5 * fw, 0.9 * fh]], np.float32)
    inside = boxes_to_input(boxes, fit)
    assert inside[:, 0::2].min() >= fit.pad_x - 1e-3 and inside[:, 2].max() <= 640 + 1e-3
    np.testing.assert_allclose(boxes_to_frame(inside, fit), boxes, atol=1e-3)
    if mode == "letterbox":  # aspect kept: same scale on both axes (up to rounding)
        assert fit.scale_x == pytest.approx(fit.scale_y, rel=0.01)
        assert fit.pad_x == 0 or fit.pad_y == 0


def test_letterbox_places_the_frame_and_pads_around_it() -> None:
    frame = np.zeros((480, 640, 3), np.uint8)
    frame[100:200, 300:500] = 255  # a white part
    fit = plan_fit(640, 480, 640, 360, "letterbox")
    assert (fit.resized, fit.pad_x, fit.pad_y) == ((480, 360), 80, 0)
    out = fit_image(frame, fit, pad_value=114)
    assert out.shape == (360, 640, 3) and out.dtype == np.uint8
    assert (out[:, :80] == 114).all() and (out[:, 560:] == 114).all()
    ys, xs = np.nonzero(out[:, :, 0] > 128)
    found = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], np.float32)
    np.testing.assert_allclose(boxes_to_frame(found, fit), [[300, 100, 500, 200]], atol=2.0)


def test_boxes_in_the_padding_are_clipped_to_the_frame() -> None:
    fit = plan_fit(640, 480, 640, 360, "letterbox")
    mapped = boxes_to_frame(np.array([[0, -5, 100, 400]], np.float32), fit)
    np.testing.assert_allclose(mapped, [[0, 0, (100 - 80) / 0.75, 480]], atol=1e-3)

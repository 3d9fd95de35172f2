"""A live Azure Kinect through pyk4a (optional extra `kinect` + Microsoft's Azure Kinect SDK).

Both are imported only when this source opens, so machines without a Kinect run every other
source. What is missing is named exactly: the Python package, or the SDK library it loads.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from dal.agent.sources.base import BaseSource, Frame
from dal.errors import DependencyError, SourceError

if TYPE_CHECKING:
    from dal.agent.config import SourceConfig

logger = logging.getLogger(__name__)

CAPTURE_TIMEOUT_MS = 2000
SDK_HINT = (
    "install Microsoft's Azure Kinect SDK: on Ubuntu add packages.microsoft.com and "
    "`apt install libk4a1.4 k4a-tools` (accept the depth engine EULA), on Windows the "
    "Azure Kinect SDK 1.4 installer; then check `k4aviewer` sees the camera"
)
RESOLUTIONS = {
    "720p": "RES_720P",
    "1080p": "RES_1080P",
    "1440p": "RES_1440P",
    "1536p": "RES_1536P",
    "2160p": "RES_2160P",
    "3072p": "RES_3072P",
}
DEPTH_MODES = {
    "off": "OFF",
    "nfov_2x2binned": "NFOV_2X2BINNED",
    "nfov_unbinned": "NFOV_UNBINNED",
    "wfov_2x2binned": "WFOV_2X2BINNED",
    "wfov_unbinned": "WFOV_UNBINNED",
}


def import_pyk4a() -> Any:
    """pyk4a, or a DependencyError saying which piece (package or SDK) is missing."""
    try:
        import pyk4a
    except ModuleNotFoundError as err:
        if err.name == "pyk4a" or err.name is None:
            raise DependencyError(
                "the kinect source needs pyk4a, which is not installed",
                hint="pip install 'dal[kinect]', and " + SDK_HINT,
            ) from None
        raise DependencyError(f"pyk4a cannot load: {err}", hint=SDK_HINT) from None
    except (ImportError, OSError) as err:  # pyk4a present, libk4a.so / k4a.dll missing
        raise DependencyError(
            f"pyk4a is installed but the Azure Kinect SDK library is missing ({err})",
            hint=SDK_HINT,
        ) from None
    return pyk4a


class KinectSource(BaseSource):
    """Colour frames (and depth aligned to colour, when a depth mode is set) from a device."""

    kind = "kinect"
    live = True

    def __init__(
        self,
        device: int = 0,
        *,
        color_resolution: str = "720p",
        fps: int = 15,
        depth_mode: str = "off",
    ) -> None:
        super().__init__(f"kinect:{device}")
        self.device = device
        self.color_resolution = color_resolution
        self.fps = fps
        self.depth_mode = depth_mode
        self._k4a: Any = None
        self._pyk4a: Any = None

    @classmethod
    def from_config(cls, config: SourceConfig) -> KinectSource:
        opts = config.kinect
        device = int(config.uri) if config.uri.isdigit() else opts.device
        return cls(
            device, color_resolution=opts.color_resolution, fps=opts.fps, depth_mode=opts.depth_mode
        )

    def _device_config(self, pyk4a: Any) -> Any:
        return pyk4a.Config(
            color_resolution=getattr(pyk4a.ColorResolution, RESOLUTIONS[self.color_resolution]),
            color_format=pyk4a.ImageFormat.COLOR_BGRA32,
            depth_mode=getattr(pyk4a.DepthMode, DEPTH_MODES[self.depth_mode]),
            camera_fps=getattr(pyk4a.FPS, f"FPS_{self.fps}"),
            synchronized_images_only=self.depth_mode != "off",
        )

    def open(self) -> None:
        pyk4a = import_pyk4a()
        self._pyk4a = pyk4a
        device = pyk4a.PyK4A(config=self._device_config(pyk4a), device_id=self.device)
        try:
            device.start()
        except pyk4a.K4AException as err:
            raise SourceError(
                f"cannot start Azure Kinect device {self.device}: {err}",
                hint="check it is plugged into USB 3 and powered, not open in k4aviewer, and "
                "the udev rules allow this user",
            ) from None
        self._k4a = device
        logger.info(
            "%s: started (%s, %d fps, depth %s)",
            self.source_id,
            self.color_resolution,
            self.fps,
            self.depth_mode,
        )

    def close(self) -> None:
        if self._k4a is not None:
            try:
                self._k4a.stop()
            except self._pyk4a.K4AException as err:
                logger.warning("%s: stop failed: %s", self.source_id, err)
            self._k4a = None

    def read(self) -> Frame | None:
        if self._k4a is None:
            raise SourceError(f"{self.source_id}: read() before open()")
        while True:
            try:
                capture = self._k4a.get_capture(timeout=CAPTURE_TIMEOUT_MS)
            except self._pyk4a.K4AException as err:
                raise SourceError(f"{self.source_id}: capture failed: {err}") from None
            stamp = time.time()
            bgra = capture.color
            if bgra is None or bgra.ndim != 3:
                self._skip_corrupt("capture", "no colour image")
                continue
            rgb = np.ascontiguousarray(bgra[:, :, 2::-1])
            depth = capture.transformed_depth if self.depth_mode != "off" else None
            return self._frame(rgb, stamp, depth=depth)

"""Images in a folder, in name order: replays, demos and experiments (optionally with COCO
ground truth carried along as the labelling oracle)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dal.agent.sources.base import BaseSource, Frame, GroundTruth, Pacer
from dal.coco import CocoDataset, load_coco, read_image
from dal.errors import DatasetError, SourceError

if TYPE_CHECKING:
    from dal.agent.config import SourceConfig

logger = logging.getLogger(__name__)

DEFAULT_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


def list_images(folder: Path, extensions: Sequence[str], recursive: bool) -> list[Path]:
    """Image files under `folder`, sorted by their path relative to it (stable replay order)."""
    wanted = {e.lower() for e in extensions}
    pattern = "**/*" if recursive else "*"
    found = [p for p in folder.glob(pattern) if p.is_file() and p.suffix.lower() in wanted]
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def ground_truth_index(dataset: CocoDataset) -> dict[Path, GroundTruth]:
    """Resolved image path -> its boxes, so folder files find their annotations by location."""
    to_label = dataset.category_to_label
    index: dict[Path, GroundTruth] = {}
    for rec in dataset.images:
        labels = np.array([to_label[int(c)] for c in rec.category_ids], dtype=np.int64)
        index[dataset.image_path(rec).resolve()] = GroundTruth(
            boxes=np.asarray(rec.boxes, dtype=np.float32).reshape(-1, 4),
            labels=labels,
            category_ids=np.asarray(rec.category_ids, dtype=np.int64),
            image_id=rec.id,
            file_name=rec.file_name,
        )
    return index


class FolderSource(BaseSource):
    """Reads every image once (or forever with `loop`; the folder is listed again each round)."""

    kind = "folder"

    def __init__(
        self,
        folder: str | Path,
        *,
        annotations: str | Path | None = None,
        interval_s: float = 1.0,
        extensions: Sequence[str] = DEFAULT_EXTENSIONS,
        recursive: bool = False,
        realtime: bool = False,
        loop: bool = False,
    ) -> None:
        super().__init__(f"folder:{folder}")
        self.folder = Path(folder)
        self.annotations = Path(annotations) if annotations else None
        self.interval_s = interval_s
        self.extensions = tuple(extensions)
        self.recursive = recursive
        self.loop = loop
        self._pacer = Pacer(realtime)
        self._files: list[Path] = []
        self._pos = 0
        self._anchor = 0.0
        self._truth: dict[Path, GroundTruth] = {}

    @classmethod
    def from_config(cls, config: SourceConfig) -> FolderSource:
        opts = config.folder
        return cls(
            config.uri,
            annotations=opts.annotations,
            interval_s=opts.interval_s,
            extensions=opts.extensions,
            recursive=opts.recursive,
            realtime=config.realtime,
            loop=config.loop,
        )

    def open(self) -> None:
        if not self.folder.is_dir():
            raise SourceError(
                f"image folder {self.folder} not found",
                hint="set [source] uri to an existing folder of images",
            )
        self._files = self._list()
        if self.annotations is not None:
            dataset = load_coco(self.annotations, check_files=False)
            self._truth = ground_truth_index(dataset)
            matched = sum(1 for p in self._files if p.resolve() in self._truth)
            logger.info(
                "%s: ground truth for %d of %d images from %s",
                self.source_id,
                matched,
                len(self._files),
                self.annotations,
            )
        self._pos = 0
        self._anchor = time.time()
        self._pacer.reset()

    def _list(self) -> list[Path]:
        files = list_images(self.folder, self.extensions, self.recursive)
        if not files:
            raise SourceError(
                f"no images ({', '.join(self.extensions)}) in {self.folder}",
                hint="copy images there, or set [source.folder] extensions / recursive",
            )
        return files

    def read(self) -> Frame | None:
        while True:
            if self._pos >= len(self._files):
                if not self.loop:
                    return None
                self.stats.loops += 1
                self._files = self._list()
                self._pos = 0
            path = self._files[self._pos]
            media_time = self._next_index * self.interval_s
            self._pos += 1
            try:
                image = read_image(path)
            except DatasetError as err:
                self._skip_corrupt(path.name, err)
                continue
            self._pacer.wait(media_time)
            return self._frame(
                image,
                self._anchor + media_time,
                ground_truth=self._truth.get(path.resolve()),
                name=path.relative_to(self.folder).as_posix(),
            )

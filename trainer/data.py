"""COCO images as torch tensors, with the online augmentation of the paper (Albumentations).

Augmentations keep boxes right because Albumentations moves them with the pixels and drops those
pushed mostly out of the frame.
"""

from __future__ import annotations

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset

from dal.coco import CocoDataset, check_image_size, read_image


def training_augmentation(strength: float = 1.0, seed: int | None = None) -> A.Compose:
    """Flip, colour jitter, Gaussian noise and blur, shift/scale: the paper's set.

    Albumentations keeps its own random state (global seeds do not reach it): pass `seed` for
    runs that repeat exactly."""
    return A.Compose(
        [
            A.HorizontalFlip(p=0.5),
            A.ColorJitter(
                brightness=0.3 * strength,
                contrast=0.3 * strength,
                saturation=0.3 * strength,
                hue=0.03 * strength,
                p=0.8,
            ),
            A.GaussNoise(std_range=(0.01, 0.05 * strength), p=0.3),
            A.GaussianBlur(blur_limit=(3, 5), p=0.2),
            A.Affine(
                translate_percent=(-0.1 * strength, 0.1 * strength),
                scale=(1 - 0.2 * strength, 1 + 0.2 * strength),
                border_mode=0,
                p=0.5,
            ),
        ],
        bbox_params=A.BboxParams(
            format="pascal_voc", label_fields=["labels"], min_visibility=0.3, min_area=16
        ),
        seed=seed,
    )


class CocoDetection(Dataset):
    """Yields (image float CHW 0..1, target dict) in torchvision's detection format."""

    def __init__(self, coco: CocoDataset, augment: A.Compose | None = None) -> None:
        self.coco = coco
        self.augment = augment
        self.category_to_label = coco.category_to_label

    def __len__(self) -> int:
        return len(self.coco.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        rec = self.coco.images[index]
        path = self.coco.image_path(rec)
        image = read_image(path)
        check_image_size(rec, image, path)
        boxes = rec.boxes.astype(np.float32).reshape(-1, 4)
        labels = np.array([self.category_to_label[int(c)] for c in rec.category_ids], np.int64)
        if self.augment is not None:
            out = self.augment(image=image, bboxes=boxes, labels=labels)
            image = out["image"]
            boxes = np.asarray(out["bboxes"], np.float32).reshape(-1, 4)
            labels = np.asarray(out["labels"], np.int64)
        tensor = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float() / 255.0
        target = {
            "boxes": torch.from_numpy(boxes),
            "labels": torch.from_numpy(labels),
            "image_id": torch.tensor(rec.id),
        }
        return tensor, target


def collate(batch: list) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Detection batches are lists: images may differ in size and box count."""
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)

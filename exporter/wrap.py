"""The exportable forward pass: one image in, boxes + labels + scores + probs + P2 feature out.

torchvision's RoIHeads keeps only the winning class score of each box; the agent needs the full
softmax row (background included) to score uncertainty, and the P2 feature for diversity. This
module re-runs the trained submodules with post-processing that remembers which proposal each
kept box came from. The multi-level RoI merge concatenates per-level results and reorders the
proposals to match, instead of torchvision's ONNX scatter (~450 ms on a 2-core CPU).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import boxes as box_ops
from torchvision.ops import roi_align

# FPN level assignment (Lin et al., FPN, Eq. 1), as torchvision's LevelMapper uses it.
CANONICAL_SCALE = 224
CANONICAL_LEVEL = 4


class ExportableDetector(nn.Module):
    """Wraps a trained torchvision FasterRCNN for a fixed input of width x height."""

    def __init__(self, model: FasterRCNN, width: int, height: int) -> None:
        super().__init__()
        model.eval()
        self.width, self.height = width, height
        self.backbone = model.backbone
        self.rpn = model.rpn
        self.roi_heads = model.roi_heads
        transform = model.transform
        self.register_buffer("mean", torch.tensor(transform.image_mean).view(3, 1, 1))
        self.register_buffer("std", torch.tensor(transform.image_std).view(3, 1, 1))
        divisor = transform.size_divisible
        self.padded = (math.ceil(height / divisor) * divisor, math.ceil(width / divisor) * divisor)
        pool = self.roi_heads.box_roi_pool
        self.featmap_names = list(pool.featmap_names)
        self.output_size = tuple(pool.output_size)
        self.sampling_ratio = pool.sampling_ratio

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 HWC RGB -> normalised float NCHW, zero-padded like GeneralizedRCNNTransform."""
        x = image.permute(2, 0, 1).float() / 255.0
        x = (x - self.mean) / self.std
        pad_h, pad_w = self.padded[0] - self.height, self.padded[1] - self.width
        return F.pad(x, (0, pad_w, 0, pad_h)).unsqueeze(0)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.preprocess(image)
        features = self.backbone(x)
        feature = features["0"].mean(dim=(2, 3))[0]
        images = ImageList(x, [(self.height, self.width)])
        proposals, _ = self.rpn(images, features)
        levels = [features[name] for name in self.featmap_names]
        pooled, proposals_in_order = self.pool_levels(levels, proposals[0])
        heads = self.roi_heads
        class_logits, box_regression = heads.box_predictor(heads.box_head(pooled))
        return (*self.postprocess(class_logits, box_regression, proposals_in_order), feature)

    def pool_levels(
        self, levels: list[torch.Tensor], proposals: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """RoIAlign each proposal on its FPN level; returns pooled features and the proposals
        reordered to match them (level by level)."""
        scales = [2.0 ** round(math.log2(int(f.shape[-2]) / self.height)) for f in levels]
        k_min, k_max = -math.log2(scales[0]), -math.log2(scales[-1])
        sizes = torch.sqrt(box_ops.box_area(proposals))
        target = torch.floor(CANONICAL_LEVEL + torch.log2(sizes / CANONICAL_SCALE) + 1e-6)
        level_of = torch.clamp(target, min=k_min, max=k_max) - k_min
        pooled, ordered = [], []
        for index, (feature_map, scale) in enumerate(zip(levels, scales, strict=True)):
            boxes = proposals[torch.where(level_of == index)[0]]
            rois = torch.cat([torch.zeros_like(boxes[:, :1]), boxes], dim=1)
            pooled.append(
                roi_align(feature_map, rois, self.output_size, scale, self.sampling_ratio)
            )
            ordered.append(boxes)
        return torch.cat(pooled), torch.cat(ordered)

    def postprocess(
        self, class_logits: torch.Tensor, box_regression: torch.Tensor, proposals: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """torchvision's postprocess_detections, keeping each box's proposal index so the full
        softmax row of every kept box can be returned."""
        heads = self.roi_heads
        probs = F.softmax(class_logits, -1)
        boxes = heads.box_coder.decode(box_regression, [proposals])
        boxes = box_ops.clip_boxes_to_image(boxes, (self.height, self.width))
        n, classes = probs.shape
        labels = torch.arange(classes).view(1, -1).expand(n, classes)
        rows = torch.arange(n).view(-1, 1).expand(n, classes)
        # every (proposal, foreground class) pair is a candidate, as in torchvision
        boxes = boxes[:, 1:].reshape(-1, 4)
        scores = probs[:, 1:].reshape(-1)
        labels = labels[:, 1:].reshape(-1)
        rows = rows[:, 1:].reshape(-1)
        keep = torch.where(scores > heads.score_thresh)[0]
        boxes, scores, labels, rows = boxes[keep], scores[keep], labels[keep], rows[keep]
        keep = box_ops.remove_small_boxes(boxes, min_size=1e-2)
        boxes, scores, labels, rows = boxes[keep], scores[keep], labels[keep], rows[keep]
        keep = box_ops.batched_nms(boxes, scores, labels, heads.nms_thresh)
        keep = keep[: heads.detections_per_img]
        return boxes[keep], labels[keep], scores[keep], probs[rows[keep]]

"""Faster R-CNN builders: the paper's ResNet-50-FPN and a light MobileNetV2-FPN for CPUs.

Both have a real stride-4 P2 level (FPN output "0"), whose global average pool is the image
feature the query strategies use. torchvision's MobileNetV3-FPN has no stride-4 level, so the
light model is built here from MobileNetV2 stages at strides 4/8/16/32.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torchvision.models import mobilenet_v2, resnet50
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.backbone_utils import BackboneWithFPN, _resnet_fpn_extractor
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.rpn import AnchorGenerator, RegionProposalNetwork
from torchvision.ops import misc as misc_nn_ops
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from dal.contract import DEFAULT_INPUT_HEIGHT, DEFAULT_INPUT_WIDTH, FEATURE_DIM
from dal.errors import ModelError
from dal.trainer.weights import find_weights, load_state_dict

log = logging.getLogger(__name__)

ARCHITECTURES = ("mobilenet_v2_fpn", "resnet50_fpn")

# MobileNetV2 `features` indices whose outputs sit at strides 4, 8, 16, 32, and their widths.
_MOBILENET_RETURN_LAYERS = {"3": "0", "6": "1", "13": "2", "17": "3"}
_MOBILENET_CHANNELS = [24, 32, 96, 320]
# Last `features` index of each MobileNetV2 stage, and ResNet's stages, in the order they run.
_MOBILENET_STAGE_ENDS = (1, 3, 6, 13, 17)
_RESNET_STAGES = ("conv1", "layer1", "layer2", "layer3", "layer4")
LIGHT_BOX_HEAD_WIDTH = 256


@dataclass(frozen=True)
class DetectorConfig:
    """Everything needed to rebuild a detector; stored inside every checkpoint."""

    arch: str = "mobilenet_v2_fpn"
    class_names: tuple[str, ...] = ("part",)
    input_width: int = DEFAULT_INPUT_WIDTH
    input_height: int = DEFAULT_INPUT_HEIGHT
    rpn_pre_nms_top_n_test: int = 300
    rpn_post_nms_top_n_test: int = 300
    box_score_thresh: float = 0.05
    box_nms_thresh: float = 0.5
    box_detections_per_img: int = 100
    trainable_backbone_layers: int = 3
    # Pretrained backbones keep their BatchNorm statistics frozen; stored so that a checkpoint
    # rebuilds with the same layer types.
    frozen_batchnorm: bool = False
    # Light model only: False runs the RPN on P3 and up (two anchor sizes per level), which
    # drops the costliest RPN work (P2 has 3/4 of all cells); RoIs and the feature still use P2.
    # True is the layout of checkpoints written before the option existed.
    rpn_on_p2: bool = True

    @property
    def num_classes(self) -> int:
        """Classes including background, as torchvision counts them."""
        return len(self.class_names) + 1

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["class_names"] = list(self.class_names)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> DetectorConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelError(f"detector config has unknown keys {unknown}")
        values = dict(data)
        values["class_names"] = tuple(values.get("class_names", ()))
        return cls(**values)

    def validate(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise ModelError(f"unknown architecture {self.arch!r}; choose one of {ARCHITECTURES}")
        if not self.class_names:
            raise ModelError("a detector needs at least one class name")
        if self.input_width < 32 or self.input_height < 32:
            raise ModelError(f"input size {self.input_width}x{self.input_height} is too small")


def _separable_conv(channels: int) -> nn.Sequential:
    """3x3 depthwise + 1x1 pointwise: ~1/9 of a full 3x3 conv's cost at P2's 160x96 cells."""
    return nn.Sequential(
        nn.Conv2d(channels, channels, 3, padding=1, groups=channels),
        nn.Conv2d(channels, channels, 1),
    )


class LightRPNHead(nn.Module):
    """torchvision's RPNHead with a separable conv: the full 3x3 conv on P2 dominated CPU time."""

    def __init__(self, channels: int, num_anchors: int) -> None:
        super().__init__()
        self.conv = _separable_conv(channels)
        self.cls_logits = nn.Conv2d(channels, num_anchors, 1)
        self.bbox_pred = nn.Conv2d(channels, num_anchors * 4, 1)

    def forward(
        self, features: list[torch.Tensor]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        logits, deltas = [], []
        for feature in features:
            hidden = torch.relu(self.conv(feature))
            logits.append(self.cls_logits(hidden))
            deltas.append(self.bbox_pred(hidden))
        return logits, deltas


class RPNWithoutP2(RegionProposalNetwork):
    """Proposals from FPN levels P3.. only: P2 stays for RoI pooling and the image feature."""

    def forward(self, images, features, targets=None):  # type: ignore[override]
        upper = {name: value for name, value in features.items() if name != "0"}
        return super().forward(images, upper, targets)


def _rpn_without_p2() -> RPNWithoutP2:
    """torchvision's FPN RPN defaults, with P2's 32 px anchors moved up to P3 beside 64 px."""
    sizes = ((32, 64), (96, 128), (192, 256), (384, 512))
    anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
    return RPNWithoutP2(
        anchors,
        LightRPNHead(FEATURE_DIM, anchors.num_anchors_per_location()[0]),
        fg_iou_thresh=0.7,
        bg_iou_thresh=0.3,
        batch_size_per_image=256,
        positive_fraction=0.5,
        pre_nms_top_n={"training": 2000, "testing": 1000},
        post_nms_top_n={"training": 2000, "testing": 1000},
        nms_thresh=0.7,
    )


def _freeze_mobilenet_stages(features: nn.Module, trainable_layers: int) -> None:
    n_frozen = len(_MOBILENET_STAGE_ENDS) - trainable_layers
    frozen_until = _MOBILENET_STAGE_ENDS[n_frozen - 1] if n_frozen > 0 else -1
    for name, module in features.named_children():
        module.requires_grad_(int(name) > frozen_until)


def _mobilenet_v2_fpn_backbone(
    weights_path: Path | None, trainable_layers: int, pretrained: bool
) -> nn.Module:
    # Frozen BN with pretrained statistics: detection batches are far too small to re-estimate
    # them. From scratch (tests) there are no statistics to freeze, so plain BN trains.
    norm_layer = misc_nn_ops.FrozenBatchNorm2d if pretrained else nn.BatchNorm2d
    net = mobilenet_v2(weights=None, norm_layer=norm_layer)
    if weights_path is not None:
        state = load_state_dict(weights_path)
        missing, unexpected = net.load_state_dict(state, strict=False)
        if [k for k in missing if not k.startswith("classifier")] or unexpected:
            raise ModelError(f"{weights_path}: not MobileNetV2 ImageNet weights")
    features = net.features[:18]  # drop the 1280-channel head conv, detection does not need it
    # With pretrained weights the early stages stay frozen and only the last `trainable_layers`
    # stages learn (torchvision's convention).
    _freeze_mobilenet_stages(features, trainable_layers if pretrained else 5)
    backbone = BackboneWithFPN(
        features,
        return_layers=_MOBILENET_RETURN_LAYERS,
        in_channels_list=_MOBILENET_CHANNELS,
        out_channels=FEATURE_DIM,
        extra_blocks=LastLevelMaxPool(),
    )
    for index in range(len(backbone.fpn.layer_blocks)):
        backbone.fpn.layer_blocks[index] = _separable_conv(FEATURE_DIM)
    return backbone


def _resnet50_fpn_backbone(
    weights_path: Path | None, trainable_layers: int, pretrained: bool
) -> nn.Module:
    norm_layer = misc_nn_ops.FrozenBatchNorm2d if pretrained else nn.BatchNorm2d
    net = resnet50(weights=None, norm_layer=norm_layer)
    if weights_path is not None:
        net.load_state_dict(load_state_dict(weights_path))
    return _resnet_fpn_extractor(net, trainable_layers if pretrained else 5)


def resolve_backbone_weights(arch: str, weights: str | Path | None) -> Path | None:
    """'imagenet' -> the local torchvision file; a path -> that file; None -> random init."""
    if weights is None or weights == "none":
        return None
    if weights != "imagenet":
        return Path(weights)
    name = "mobilenet_v2" if arch == "mobilenet_v2_fpn" else "resnet50"
    found = find_weights(name)
    if found is None:
        raise ModelError(
            f"no local ImageNet weights for {arch}",
            hint="run scripts/setup.sh (it installs MobileNetV2's), pass --backbone-weights FILE, "
            "or --backbone-weights none to start from random weights",
        )
    return found


def build_detector(config: DetectorConfig, backbone_weights: Path | None = None) -> FasterRCNN:
    """A torchvision FasterRCNN sized for the fixed model input (no upscaling to 1333 px).

    `config.frozen_batchnorm` must be True when `backbone_weights` is given (see `for_weights`).
    """
    config.validate()
    if backbone_weights is not None and not config.frozen_batchnorm:
        raise ModelError("pretrained backbone weights need config.frozen_batchnorm=True")
    make = (
        _mobilenet_v2_fpn_backbone if config.arch == "mobilenet_v2_fpn" else _resnet50_fpn_backbone
    )
    backbone = make(backbone_weights, config.trainable_backbone_layers, config.frozen_batchnorm)
    short, long = sorted((config.input_width, config.input_height))
    light = {}
    if config.arch == "mobilenet_v2_fpn":
        # Sized for a 2-core CPU: separable RPN conv, a 256-wide box head, fewer RoI samples.
        light = {
            "rpn_head": LightRPNHead(FEATURE_DIM, 3),
            "box_head": TwoMLPHead(FEATURE_DIM * 7 * 7, LIGHT_BOX_HEAD_WIDTH),
            "box_predictor": FastRCNNPredictor(LIGHT_BOX_HEAD_WIDTH, config.num_classes),
            "box_batch_size_per_image": 128,
        }
    model = FasterRCNN(
        backbone,
        num_classes=None if light else config.num_classes,
        # min/max equal to the input size: a frame at model size goes through unscaled.
        min_size=short,
        max_size=long,
        rpn_pre_nms_top_n_test=config.rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_test=config.rpn_post_nms_top_n_test,
        box_score_thresh=config.box_score_thresh,
        box_nms_thresh=config.box_nms_thresh,
        box_detections_per_img=config.box_detections_per_img,
        **light,
    )
    if config.arch == "mobilenet_v2_fpn" and not config.rpn_on_p2:
        model.rpn = _rpn_without_p2()
    set_test_proposals(model, config.rpn_pre_nms_top_n_test, config.rpn_post_nms_top_n_test)
    return model


def set_test_proposals(model: FasterRCNN, pre_nms: int, post_nms: int) -> None:
    """Proposals kept at inference (torchvision keeps them in a private dict)."""
    model.rpn._pre_nms_top_n["testing"] = pre_nms
    model.rpn._post_nms_top_n["testing"] = post_nms


def set_training_budget(model: FasterRCNN, proposals: int, rois: int) -> None:
    """Proposals after NMS and sampled RoIs per training image.

    torchvision's 2000 proposals and 512 RoIs suit a GPU; on a CPU RoIAlign's backward and the
    proposal matching grow with them, and a few objects per image need far fewer."""
    model.rpn._pre_nms_top_n["training"] = proposals
    model.rpn._post_nms_top_n["training"] = proposals
    model.roi_heads.fg_bg_sampler.batch_size_per_image = rois


def set_trainable_layers(model: FasterRCNN, config: DetectorConfig, layers: int) -> None:
    """Train only the last `layers` backbone stages (0-5); FPN and heads always train.

    Frozen early stages need no backward pass at all, the largest saving on a CPU, and on a few
    labels they keep ImageNet's generic filters. Needs a pretrained (frozen-BN) backbone."""
    if not 0 <= layers <= 5:
        raise ModelError(f"trainable layers must be 0..5, not {layers}")
    if not config.frozen_batchnorm:
        return  # from random weights every stage must learn
    body = model.backbone.body
    if config.arch == "mobilenet_v2_fpn":
        _freeze_mobilenet_stages(body, layers)
    else:
        trainable = set(_RESNET_STAGES[len(_RESNET_STAGES) - layers :])
        for name, parameter in body.named_parameters():
            parameter.requires_grad_(name.split(".")[0] in trainable)


def replace_head(model: FasterRCNN, num_classes: int) -> None:
    """Give the box predictor a new class count (fine-tuning onto another class set)."""
    in_features = model.roi_heads.box_predictor.cls_score.in_features
    model.roi_heads.box_predictor = FastRCNNPredictor(in_features, num_classes)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(all, trainable) parameter counts, for logs."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable


@torch.no_grad()
def p2_feature(model: FasterRCNN, images: torch.Tensor) -> torch.Tensor:
    """GAP of FPN level P2 for a batch of already-transformed images (used by parity checks)."""
    return model.backbone(images)["0"].mean(dim=(2, 3))

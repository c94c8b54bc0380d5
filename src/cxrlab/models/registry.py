"""Model registry: torchvision architectures adapted to one channel, small images and one logit.

Adaptation, per architecture (``create_model`` applies it):
- the first convolution takes 1 channel. Up to 64 px its stride is 1, so a 28 px image is not halved
  before the first block; from 128 px it keeps torchvision's stride 2 (see ``stem_stride``). Kernel sizes
  stay torchvision's, so ImageNet weights still fit after folding RGB.
- DenseNet-121 keeps its stem max-pool, so its stem halves the image once instead of twice (28 px
  enters the first dense block at 14x14, as MobileNetV3 and EfficientNet reach 14x14 after their first
  stride-2 block). Dropping the pool too gives a 3x3 final map instead of 1x1 but cost 4x the training
  time on a 2-core CPU (28 vs 113 img/s, batch 32), so the pool stays.
- final feature maps: 28 px 2x2 (MobileNetV3-Large, EfficientNet-B0) and 1x1 (DenseNet-121);
  64 px 4x4; 128 px 4x4; 224 px 7x7 (all three).
- the classifier becomes a two-hidden-layer MLP ending in one logit (14 for the multilabel task).
- ``resnet18`` is MedMNIST v2's reference model, built as they trained it: up to 64 px a 3x3 stride-1 first
  convolution and no stem max-pool (their 28 px ResNet), from 128 px torchvision's stem; one linear layer
  512 -> outputs as the head. One logit with BCE is their two-way softmax with cross-entropy in another
  parametrisation (softmax over two logits is the sigmoid of their difference).
- BatchNorm momentum: ``bn_momentum`` (default 0.1, PyTorch's) is set on every BatchNorm layer. torchvision
  gives MobileNetV3 0.01, whose running statistics then lag the weights by ~100 steps: on PneumoniaMNIST its
  val accuracy swung by 20 points between epochs while train loss fell smoothly (README, Models).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn

from cxrlab.errors import ConfigError, WeightsError
from cxrlab.models.architectures import ARCHITECTURES
from cxrlab.models.segmentation import SegmentationPreprocessor


def make_head(in_features: int, activation: type[nn.Module] | None, dropout: tuple[float, float], num_outputs: int = 1) -> nn.Module:
    """in -> 512 -> 256 -> outputs, the head the experiment gives MobileNetV3 (Hardswish) and the others alike;
    a single linear layer when ``activation`` is None (MedMNIST v2's ResNet)."""
    if activation is None:
        return nn.Linear(in_features, num_outputs)
    return nn.Sequential(
        nn.Linear(in_features, 512),
        activation(),
        nn.Dropout(dropout[0]),
        nn.Linear(512, 256),
        nn.ReLU(),
        nn.Dropout(dropout[1]),
        nn.Linear(256, num_outputs),
    )


def _get(module: nn.Module, dotted: str) -> nn.Module:
    for part in dotted.split("."):
        module = getattr(module, part)
    return module


def _set(module: nn.Module, dotted: str, value: nn.Module) -> None:
    parent, _, name = dotted.rpartition(".")
    setattr(_get(module, parent) if parent else module, name, value)


def stem_stride(image_size: int) -> int:
    """Stride 1 up to 64 px keeps a 2x2 (28 px) or 4x4 (64 px) final map; from 128 px torchvision's stride 2
    gives 4x4 (128) and 7x7 (224) at a quarter of the cost of stride 1."""
    return 1 if image_size <= 64 else 2


def _one_channel_stem(conv: nn.Conv2d, stride: int) -> nn.Conv2d:
    return nn.Conv2d(1, conv.out_channels, conv.kernel_size, stride=stride, padding=conv.padding, bias=conv.bias is not None)


def _medmnist_resnet_stem(net: nn.Module) -> nn.Conv2d:
    """MedMNIST v2's small-image ResNet: 3x3 stride-1 first convolution, no max-pool."""
    net.maxpool = nn.Identity()
    return nn.Conv2d(1, net.conv1.out_channels, kernel_size=3, stride=1, padding=1, bias=False)


def set_bn_momentum(model: nn.Module, momentum: float | None) -> None:
    if momentum is None:
        return
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = momentum


def fold_rgb_stem(weight: torch.Tensor) -> torch.Tensor:
    """(out, 3, k, k) -> (out, 1, k, k) by summing over colour, as timm adapts RGB stems to grayscale:
    a gray image fed as three equal channels gives the same response."""
    return weight.sum(dim=1, keepdim=True)


def load_imagenet_state(name: str, weights_file: str | None) -> dict[str, torch.Tensor]:
    if weights_file:
        path = Path(weights_file).expanduser()
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise WeightsError(f"weights file not found: {path}") from None
        except Exception as exc:  # torch raises many types for unreadable or unsafe files
            raise WeightsError(f"cannot load weights file {path} as a state dict ({type(exc).__name__}: {exc})") from None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise WeightsError(f"weights file {path} does not hold a state dict of tensors")
        return state
    weights = torchvision.models.get_weight(ARCHITECTURES[name].weights)
    try:
        return weights.get_state_dict(progress=True, check_hash=True)
    except Exception as exc:  # URLError, HTTPError, socket errors: all mean no weights
        raise WeightsError(
            f"cannot download ImageNet weights for {name} from {weights.url} ({type(exc).__name__}: {exc}).\n"
            f"Download the file where there is internet and pass it with --weights-file PATH, or train without --pretrained."
        ) from None


def create_model(
    name: str,
    dropout: tuple[float, float] = (0.4, 0.3),
    pretrained: bool = False,
    weights_file: str | None = None,
    segmentation: bool = False,
    seg_threshold: float = 0.2,
    image_size: int = 28,
    num_outputs: int = 1,
    bn_momentum: float | None = None,
) -> nn.Module:
    """Build an adapted architecture. Input: (N, 1, S, S) normalised images. Output: (N, num_outputs) logits."""
    if name not in ARCHITECTURES:
        raise ConfigError(f"unknown model {name!r}; available: {', '.join(ARCHITECTURES)}")
    arch = ARCHITECTURES[name]
    net = getattr(torchvision.models, arch.builder)()
    if pretrained:
        state = load_imagenet_state(name, weights_file)
        try:
            net.load_state_dict(state)
        except RuntimeError as exc:
            raise WeightsError(f"weights do not fit {name}: {str(exc).splitlines()[0]}") from None
    stem = _get(net, arch.stem)
    if arch.medmnist_stem and stem_stride(image_size) == 1:
        new_stem = _medmnist_resnet_stem(net)  # a 3x3 kernel: the 7x7 ImageNet stem does not fit and starts random
    else:
        new_stem = _one_channel_stem(stem, stem_stride(image_size))
        if pretrained:
            with torch.no_grad():
                new_stem.weight.copy_(fold_rgb_stem(stem.weight))
    _set(net, arch.stem, new_stem)
    activation = getattr(nn, arch.head_activation) if arch.head_activation else None
    setattr(net, arch.classifier, make_head(arch.feature_width, activation, tuple(dropout), num_outputs))
    set_bn_momentum(net, bn_momentum)
    if segmentation:
        return nn.Sequential(SegmentationPreprocessor(seg_threshold), net)
    return net


def model_from_config(cfg, initial_weights: bool = True) -> nn.Module:
    """The configured model. ``initial_weights=False`` skips ImageNet weights, for loading a trained run."""
    pretrained = cfg.pretrained and initial_weights
    return create_model(
        cfg.model,
        tuple(cfg.dropout),
        pretrained,
        cfg.weights_file,
        cfg.segmentation,
        cfg.seg_threshold,
        cfg.size,
        cfg.num_outputs,
        cfg.bn_momentum,
    )


RESNET_BLOCKS = ("layer1", "layer2", "layer3", "layer4")


def feature_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(dotted name, module) of the feature blocks, shallow to deep: ``features``' children, or a ResNet's layers."""
    net = model[-1] if isinstance(model, nn.Sequential) else model  # behind the SegmentationPreprocessor
    if hasattr(net, "features"):
        return [(f"features.{name}", block) for name, block in net.features.named_children()]
    return [(name, getattr(net, name)) for name in RESNET_BLOCKS]


def set_trainable(model: nn.Module, name: str, part: str) -> None:
    """Progressive fine-tuning: train only the head ('head'), the head and the blocks after the last resolution
    change ('last': MobileNetV3-L features 14-16, DenseNet-121 denseblock4 + norm5, EfficientNet-B0 features 6-8,
    ResNet-18 layer4), or all."""
    net = model[-1] if isinstance(model, nn.Sequential) else model  # behind the SegmentationPreprocessor
    if part == "all":
        chosen = [model]
    else:
        chosen = [getattr(net, ARCHITECTURES[name].classifier)]
        if part == "last":
            chosen += [block for _, block in feature_blocks(model)[-ARCHITECTURES[name].last_blocks :]]
    model.requires_grad_(False)
    for module in chosen:
        module.requires_grad_(True)


def freeze_frozen_norms(model: nn.Module) -> None:
    """Keep BatchNorm layers whose parameters are frozen in eval mode, so their running statistics stay put."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in module.parameters()):
            module.eval()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

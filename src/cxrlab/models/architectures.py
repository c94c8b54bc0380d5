"""One entry per architecture, everything cxrlab knows about it (timm's registry holds its models the same way).
Plain data, no torch: the config, the CLI and study workers read it without importing torch."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Architecture:
    builder: str  # the function in torchvision.models
    weights: str  # torchvision weights enum value used for --pretrained
    stem: str  # dotted path of the first convolution
    classifier: str  # attribute holding the classifier
    feature_width: int  # channels into the classifier
    head_activation: str | None  # torch.nn class of the MLP head; None: one linear layer (MedMNIST v2's ResNet)
    lr: float  # default learning rate at the default batch of 64 (docs/results/pneumoniamnist-28/README.md)
    last_blocks: int  # feature blocks after the last resolution change: what fine-tuning stage 'last' trains
    medmnist_stem: bool = False  # up to 64 px a 3x3 stride-1 stem and no max-pool, as MedMNIST v2's small-image ResNet
    in_study: bool = True  # one of the experiment's three models (compare's default)


ARCHITECTURES: dict[str, Architecture] = {
    # the experiment's rates at batch 16 were 1e-3, 1e-4, 3e-4 (configs/seed.yaml); twice them at batch 64 won on val
    "mobilenet_v3_large": Architecture(
        "mobilenet_v3_large",
        "MobileNet_V3_Large_Weights.IMAGENET1K_V1",
        "features.0.0",
        "classifier",
        960,
        "Hardswish",
        lr=2e-3,
        last_blocks=3,
    ),
    "densenet121": Architecture(
        "densenet121", "DenseNet121_Weights.IMAGENET1K_V1", "features.conv0", "classifier", 1024, "ReLU", lr=2e-4, last_blocks=2
    ),
    "efficientnet_b0": Architecture(
        "efficientnet_b0", "EfficientNet_B0_Weights.IMAGENET1K_V1", "features.0.0", "classifier", 1280, "SiLU", lr=6e-4, last_blocks=3
    ),
    # MedMNIST v2's reference model and its rate (configs/medmnist_v2.yaml)
    "resnet18": Architecture(
        "resnet18", "ResNet18_Weights.IMAGENET1K_V1", "conv1", "fc", 512, None, lr=1e-3, last_blocks=1, medmnist_stem=True, in_study=False
    ),
}
MODEL_NAMES = tuple(ARCHITECTURES)
STUDY_MODELS = tuple(name for name, arch in ARCHITECTURES.items() if arch.in_study)
DEFAULT_LR = {name: arch.lr for name, arch in ARCHITECTURES.items()}

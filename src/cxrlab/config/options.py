"""The one config object of a run: every option (declared with ``opt``, read by config/schema.py), its default,
its checks, and the rules derived from it (the resolved config, the selection rule).

A run saves its resolved config as ``config.yaml``; loading that file gives the same run back.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, fields
from pathlib import Path

import yaml

from cxrlab.config.schema import build, load_yaml, opt, option_types
from cxrlab.data.datasets import DATASET_NAMES, SIZES, get_dataset
from cxrlab.errors import ConfigError
from cxrlab.models.architectures import DEFAULT_LR, MODEL_NAMES

LR_SCHEDULES = ("plateau", "multistep")
SELECT_METRICS = ("roc_auc", "loss", "accuracy", "balanced_accuracy")
THRESHOLD_RULES = ("0.5", "youden", "sensitivity", "sensitivity-bound", "bayes")
FINETUNE_PARTS = ("head", "last", "all")
TASKS = ("binary", "multilabel")
PRECISIONS = ("fp32", "auto", "bf16", "fp16")
DECISIONS = ("refer", "single")


@dataclass
class Config:
    # data
    dataset: str = opt(
        "chestmnist",
        "MedMNIST data set: chestmnist (NIH ChestX-ray14) or pneumoniamnist (pediatric, normal vs pneumonia)",
        choices=DATASET_NAMES,
        public=True,
    )
    task: str = opt(
        "binary",
        "binary (ChestMNIST: two labels, single-label images only; PneumoniaMNIST: every image); "
        "multilabel: all 14 ChestMNIST labels, all images",
        choices=TASKS,
        public=True,
    )
    data_root: str = opt(os.path.join("~", ".medmnist"), "folder holding DATASET[_SIZE].npz (medmnist's root)")
    size: int = opt(28, "image size: 28, 64, 128 or 224", choices=SIZES, public=True)
    classes: list[str] = opt(
        [],
        "binary task: two labels, label 0 then label 1 (default: chestmnist cardiomegaly pneumothorax, pneumoniamnist normal pneumonia)",
        nargs=2,
        public=True,
    )
    positive_class: str | None = opt(None, "class counted as positive in metrics (default: the second of --classes)", public=True)
    download: bool = opt(False, "download the data file from Zenodo when it is missing")
    # model
    model: str = opt("mobilenet_v3_large", "architecture", choices=MODEL_NAMES, public=True)
    dropout: list[float] = opt([0.4, 0.3], "dropout of the two hidden layers of the head")
    bn_momentum: float | None = opt(
        0.1,
        "BatchNorm running-statistics momentum for every BatchNorm layer (null: torchvision's, "
        "0.01 in MobileNetV3, whose stale statistics made val swing)",
    )
    pretrained: bool = opt(False, "start from torchvision ImageNet weights (stem folded to one channel)", public=True)
    weights_file: str | None = opt(None, "ImageNet state dict file to use instead of downloading")
    segmentation: bool = opt(False, "put the SegmentationPreprocessor in front of the model")
    seg_threshold: float = opt(0.2, "SegmentationPreprocessor mask threshold on min-max normalised input")
    # optimisation
    epochs: int = opt(60, "maximum number of epochs", public=True)
    batch_size: int = opt(64, "training batch size (the experiment's 16: configs/seed.yaml)", public=True)
    lr: float | None = opt(
        None, "learning rate (default per model: " + ", ".join(f"{k} {v:g}" for k, v in DEFAULT_LR.items()) + ")", public=True
    )
    weight_decay: float = opt(0.0, "Adam weight decay")
    pos_weight: str = opt("none", "BCE pos_weight: 'none', 'auto' (negatives/positives in train) or a number")
    lr_schedule: str = opt(
        "plateau",
        "plateau: ReduceLROnPlateau on val loss; multistep: lr x --lr-gamma at each of --lr-milestones",
        choices=LR_SCHEDULES,
        public=True,
    )
    lr_milestones: list[int] = opt([], "multistep: epochs after which the lr is multiplied by --lr-gamma (e.g. 50 75)", nargs="+")
    lr_gamma: float = opt(0.1, "multistep: factor at each milestone")
    plateau_factor: float = opt(0.5, "ReduceLROnPlateau factor (on val loss)")
    plateau_patience: int = opt(5, "ReduceLROnPlateau patience in epochs")
    early_stopping: int = opt(10, "stop after this many epochs without val improvement (0: never)", public=True)
    select_metric: str = opt(
        "loss", "val metric that picks the best checkpoint and drives early stopping", choices=SELECT_METRICS, public=True
    )
    threshold: str | None = opt(
        None,
        "single decision threshold (default: sensitivity-bound for the binary task, 0.5 per label for multilabel): "
        "'0.5', 'youden' (Youden's J on the evidence), 'sensitivity' (the highest threshold reaching "
        "--target-sensitivity on the evidence), 'sensitivity-bound' (the same, by the lower confidence "
        "bound at --bound-level: the rule-out rule) or 'bayes' (fewest expected errors at --prevalence: the "
        "temperature-calibrated probability moved to that prevalence, at 0.5); chosen on the evidence "
        "(val, or a held-out fold and val), applied unchanged to test",
        choices=THRESHOLD_RULES,
        group="point",
        public=True,
    )
    target_sensitivity: float = opt(
        0.95, "sensitivity on the evidence the 'sensitivity' and 'sensitivity-bound' threshold rules must reach", group="point", public=True
    )
    decision: str = opt(
        "refer",
        "how a prediction is answered: refer (the negative class below the rule-out threshold, the "
        "positive class from the rule-in threshold, refer between them and for images the out-of-distribution "
        "check flags) or single (the single threshold, every in-distribution image answered)",
        choices=DECISIONS,
        group="point",
    )
    rule_out_sensitivity: float = opt(
        0.98, "rule-out threshold: the highest whose sensitivity on the evidence reaches this by the lower confidence bound", group="point"
    )
    rule_in_specificity: float = opt(
        0.98, "rule-in threshold: the lowest whose specificity on the evidence reaches this by the lower confidence bound", group="point"
    )
    bound_level: float = opt(0.95, "one-sided confidence level of those lower bounds (Clopper-Pearson)", group="point")
    prevalence: float | None = opt(
        None,
        "share of the positive class where the model is used (label shift): PPV and NPV are "
        "reported at it and the 'bayes' threshold moves to it; sensitivity- and specificity-based "
        "thresholds do not depend on it (default: the evidence's own share)",
        group="point",
    )
    label_smoothing: float = opt(0.0, "BCE label smoothing: targets become y(1-e) + e/2 (0: off)", public=True)
    mixup: float = opt(0.0, "mixup alpha: mix each batch with a shuffled copy, lambda ~ Beta(alpha, alpha) (0: off)", public=True)
    finetune: str = opt(
        "",
        "progressive fine-tuning stages 'PART:EPOCHS:LR,...' with PART head, last or all, e.g. "
        "'head:3:1e-3,last:3:3e-4,all:20:1e-4' (replaces --epochs and --lr; needs --pretrained)",
    )
    cv_folds: int = opt(0, "k-fold cross-validation: train on the other folds of train, select on fold --cv-fold (0: off)")
    cv_fold: int = opt(0, "which fold (0 .. cv_folds-1) this run holds out")
    # augmentation (training batches only)
    aug_rotation: float = opt(15.0, "random rotation, +/- degrees (0: off)")
    aug_translate: float = opt(0.1, "random translation, fraction of the image side (0: off)")
    aug_hflip: float = opt(0.5, "horizontal flip probability (0: off)")
    aug_brightness: float = opt(0.2, "brightness jitter, +/- fraction (0: off)")
    aug_contrast: float = opt(0.2, "contrast jitter, +/- fraction (0: off)")
    aug_blur: bool = opt(True, "Gaussian blur, kernel 3, sigma drawn from --aug-blur-sigma")
    aug_blur_sigma: list[float] = opt([0.1, 0.5], "range of the blur sigma")
    aug_erasing: float = opt(0.0, "random erasing probability (0: off)")
    aug_perspective: float = opt(0.0, "random perspective distortion scale, applied with p=0.5 (0: off)")
    aug_corruptions: float = opt(
        0.0,
        "probability that a training image goes through one acquisition-like corruption at a random severity 1-5 "
        "(MedMNIST-C's family, data/corruptions.py; 0: off, the default until one is chosen on held-out data)",
    )
    norm_mean: float = opt(0.485, "normalisation mean (on [0,1] pixels)", public=True)
    norm_std: float = opt(0.229, "normalisation std", public=True)
    # machine and bookkeeping
    device: str = opt("auto", "auto, cpu, cuda, cuda:N or mps")
    threads: int | None = opt(None, "CPU threads for torch (default: torch's choice)", group="scoring")
    channels_last: bool = opt(True, "channels_last memory format (faster convolutions on CPU)")
    precision: str = opt(
        "fp32",
        "fp32; auto (bf16 on GPUs that run it natively, fp16 with a gradient scaler on older GPUs, fp32 "
        "on a CPU: the choice is saved); bf16 autocast (GPUs from compute capability 8.0; on CPUs with "
        "AVX512-BF16 only DenseNet-121 gained, see benchmarks/README.md); fp16 autocast with a gradient scaler (CUDA)",
        choices=PRECISIONS,
        public=True,
    )
    eval_batch_size: int = opt(512, "batch size for validation and test passes", group="scoring")
    seed: int = opt(0, "random seed; the same seed on the same CPU gives the same history", public=True)
    n_bootstrap: int = opt(1000, "bootstrap resamples for 95% confidence intervals", group="scoring")
    out: str | None = opt(None, "run directory (default runs/<timestamp>-<model>)")
    sealed: bool = opt(
        False,
        "keep test sealed: never load test's images or labels; the run ends with its evidence (val, or a held-out fold "
        "and val). A study's runs are always sealed, and its test is scored once, by `cxrlab score`, after every choice "
        "is written down",
        group="scoring",
    )
    track: bool = opt(
        False, "log the finished run to MLflow (pip install 'cxrlab[tracking]'); the run directory stays the record", group="scoring"
    )
    tracking_uri: str | None = opt(
        None, "MLflow tracking store: a server URL or database URI (default: sqlite:///mlflow.db in the working directory)", group="scoring"
    )

    def __post_init__(self) -> None:
        if not self.classes and self.dataset in DATASET_NAMES:  # the data set's own pair, so that an unvalidated Config works too
            self.classes = list(get_dataset(self.dataset).default_classes)

    # ---- derived values -------------------------------------------------
    @property
    def stages(self) -> list[tuple[str, int, float]]:
        """Fine-tuning stages (part, epochs, lr); one stage 'all' when --finetune is not given."""
        if not self.finetune:
            return [("all", self.epochs, self.learning_rate)]
        stages = []
        for item in self.finetune.split(","):
            part, epochs, lr = item.strip().split(":")
            stages.append((part, int(epochs), float(lr)))
        return stages

    @property
    def total_epochs(self) -> int:
        return sum(epochs for _, epochs, _ in self.stages)

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.model]

    @property
    def threshold_rule(self) -> str:
        """The rule asked for, else for the binary task the highest threshold whose sensitivity on the evidence reaches
        target_sensitivity by its lower confidence bound (on held-out folds and val its threshold moved least over seeds
        and resamples and its sensitivity held on val: docs/results/pneumoniamnist-28/operating_point_evidence.md),
        and 0.5 per label for multilabel (medmnist's Evaluator)."""
        if self.threshold is not None:
            return self.threshold
        return "0.5" if self.task == "multilabel" else "sensitivity-bound"

    @property
    def num_outputs(self) -> int:
        return 1 if self.task == "binary" else get_dataset(self.dataset).label_columns

    @property
    def positive(self) -> str:
        return self.positive_class or self.classes[1]

    def validate(self) -> Config:
        """Check values that argparse or YAML cannot; return self for chaining."""
        self._check_data_and_model()
        self._check_point()
        self._check_training()
        return self

    def _check_data_and_model(self) -> None:
        if self.task not in TASKS:
            raise ConfigError(f"unknown task {self.task!r}; choose one of {', '.join(TASKS)}")
        spec = get_dataset(self.dataset)
        if self.task == "multilabel" and not spec.multilabel:
            raise ConfigError(f"{spec.title} has one binary label per image: the multilabel task is for multi-label sets (chestmnist)")
        if self.task == "multilabel":
            if self.threshold_rule != "0.5":
                raise ConfigError(
                    f"threshold {self.threshold_rule!r} is for the binary task; the multilabel task uses 0.5 per label, as "
                    f"medmnist's Evaluator does"
                )
            if self.select_metric == "balanced_accuracy":
                raise ConfigError("select_metric balanced_accuracy is for the binary task; use roc_auc, loss or accuracy")
        if self.model not in MODEL_NAMES:
            raise ConfigError(f"unknown model {self.model!r}; choose one of {', '.join(MODEL_NAMES)}")
        if self.size not in SIZES:
            raise ConfigError(f"size {self.size} is not available; {spec.title} comes in {', '.join(map(str, SIZES))}")
        if len(self.classes) != 2 or self.classes[0].lower() == self.classes[1].lower():
            raise ConfigError(f"classes must be two different label names, got {self.classes!r}")
        self.classes = [c.lower() for c in self.classes]
        if self.task == "binary":
            spec.check_classes(self.classes)
        if self.positive.lower() not in self.classes:
            raise ConfigError(f"positive_class {self.positive_class!r} is not one of classes {self.classes}")
        if self.positive_class is not None:
            self.positive_class = self.positive_class.lower()
        if len(self.dropout) != 2 or not all(0 <= d < 1 for d in self.dropout):
            raise ConfigError(f"dropout must be two rates in [0, 1), got {self.dropout!r}")
        if self.weights_file and not self.pretrained:
            raise ConfigError("weights_file is only used with pretrained: true (--pretrained)")

    def _check_point(self) -> None:
        if self.select_metric not in SELECT_METRICS:
            raise ConfigError(f"select_metric must be one of {', '.join(SELECT_METRICS)}")
        if self.threshold_rule not in THRESHOLD_RULES:
            raise ConfigError(f"threshold must be one of {', '.join(THRESHOLD_RULES)}, got {self.threshold!r}")
        if not 0 < self.target_sensitivity < 1:
            raise ConfigError(f"target_sensitivity must be between 0 and 1, got {self.target_sensitivity}")
        if self.decision not in DECISIONS:
            raise ConfigError(f"decision must be one of {', '.join(DECISIONS)}, got {self.decision!r}")
        for name in ("rule_out_sensitivity", "rule_in_specificity"):  # 1 is refused by the evidence, naming the best reachable bound
            if not 0 < getattr(self, name) <= 1:
                raise ConfigError(f"{name} must be in (0, 1], got {getattr(self, name)}")
        if not 0 < self.bound_level < 1:
            raise ConfigError(f"bound_level must be between 0 and 1 (exclusive), got {self.bound_level}")
        if self.prevalence is not None and not 0 < self.prevalence < 1:
            raise ConfigError(f"prevalence must be a share of positives strictly between 0 and 1, got {self.prevalence}")
        if self.threshold_rule in ("sensitivity", "sensitivity-bound", "bayes") and self.task != "binary":
            raise ConfigError(f"threshold {self.threshold_rule!r} is for the binary task")

    def _check_training(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.lr is not None and self.lr <= 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.mixup < 0:
            raise ConfigError(f"mixup alpha must be 0 (off) or positive, got {self.mixup}")
        if self.finetune:
            self._check_finetune()
        if self.cv_folds:
            if self.task != "binary":
                raise ConfigError("cross-validation folds are stratified by class: binary task only")
            if self.cv_folds < 2 or not 0 <= self.cv_fold < self.cv_folds:
                raise ConfigError(
                    f"cv_folds must be at least 2 and cv_fold in 0..{self.cv_folds - 1}, got {self.cv_folds} / {self.cv_fold}"
                )
        if self.pos_weight not in ("none", "auto"):
            try:
                if float(self.pos_weight) <= 0:
                    raise ValueError
            except ValueError:
                raise ConfigError(f"pos_weight must be 'none', 'auto' or a positive number, got {self.pos_weight!r}") from None
        lo, hi = self.aug_blur_sigma
        if not 0 < lo <= hi:
            raise ConfigError(f"aug_blur_sigma must be 0 < low <= high, got {self.aug_blur_sigma!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if self.lr_schedule == "multistep":
            if not self.lr_milestones or any(m < 1 for m in self.lr_milestones) or sorted(self.lr_milestones) != self.lr_milestones:
                raise ConfigError(
                    f"lr_milestones must be increasing epochs of at least 1 for the multistep schedule, got {self.lr_milestones!r}"
                )
            if self.finetune:
                raise ConfigError("finetune stages each use a fresh plateau schedule; lr_schedule multistep does not combine with them")
        if not 0 < self.lr_gamma <= 1:
            raise ConfigError(f"lr_gamma must be in (0, 1], got {self.lr_gamma}")
        if self.bn_momentum is not None and not 0 < self.bn_momentum < 1:
            raise ConfigError(f"bn_momentum must be in (0, 1) or null, got {self.bn_momentum}")
        if self.norm_std <= 0:
            raise ConfigError("norm_std must be positive")

    def _check_finetune(self) -> None:
        try:
            stages = self.stages
        except ValueError:
            raise ConfigError(f"finetune must look like 'head:3:1e-3,last:3:3e-4,all:20:1e-4', got {self.finetune!r}") from None
        for part, epochs, lr in stages:
            if part not in FINETUNE_PARTS or epochs < 1 or lr <= 0:
                raise ConfigError(
                    f"finetune stage '{part}:{epochs}:{lr:g}': part must be one of {', '.join(FINETUNE_PARTS)}, "
                    "epochs at least 1 and lr positive"
                )
        if not self.pretrained:
            raise ConfigError(
                "finetune (progressive fine-tuning) starts from pretrained weights: add --pretrained (and --weights-file offline)"
            )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path: Path) -> None:
        from cxrlab.files import atomic_write_text

        atomic_write_text(Path(path), yaml.safe_dump(self.to_dict(), sort_keys=False))


def config_fields() -> list[dataclasses.Field]:
    return list(fields(Config))


def options(group: str | None = None, public: bool | None = None) -> tuple[str, ...]:
    """The names of the options in ``group`` (or every group), or of those the service may show."""
    return tuple(
        f.name
        for f in fields(Config)
        if (group is None or f.metadata["group"] == group) and (public is None or f.metadata["public"] == public)
    )


POINT_OPTIONS = options("point")
SCORING_OPTIONS = options("point") + options("scoring")  # a finished run is reused when only these differ
PUBLIC_OPTIONS = options(public=True)


OPTION_TYPES = option_types(Config)


def from_dict(values: dict, source: str = "config") -> Config:
    """A validated Config from YAML values, API keywords or flags (unknown names refused, each value typed)."""
    return build(Config, values, source, "cxrlab train --help").validate()


def load_config(path: str | Path) -> Config:
    return from_dict(load_yaml(path), source=str(path))


# ---- the resolved config ------------------------------------------------------------------------------------------
def default_run_path(model: str, root: str | Path = "runs") -> Path:
    return Path(root) / f"{time.strftime('%Y%m%d-%H%M%S')}-{model}"


def resolve(cfg: Config) -> Config:
    """Fill every derived default, so the saved config reproduces the run on its own."""
    cfg = dataclasses.replace(cfg).validate()
    cfg.lr = cfg.learning_rate
    cfg.threshold = cfg.threshold_rule
    cfg.positive_class = cfg.positive
    cfg.data_root = str(Path(cfg.data_root).expanduser().resolve())
    cfg.out = str(Path(cfg.out or default_run_path(cfg.model)).resolve())
    return cfg

"""The out-of-distribution check: is an image like the images the model was trained on? An image that is not gets
no class.

Method (chosen by measurement, benchmarks/README.md and benchmarks/ood_methods.py): for every feature block of the
model, and for the raw pixels, the Mahalanobis distance of the image's channel means to those of the training
images (one Gaussian per layer, its covariance shrunk by Ledoit-Wolf; Lee et al., NeurIPS 2018, uses several layers
the same way); each layer's distance is divided by the distance that ``VAL_ACCEPT`` of val images stay under, and
the image's score is the largest of these ratios. The threshold on that score again accepts ``VAL_ACCEPT`` of val.
The last layer alone (the classifier's input) flagged only half of the photographs and synthetic images tried;
early layers see texture and contrast that no chest radiograph has. Fitted when a run finishes, or for an older run
with ``cxrlab ood RUN``.

    RUN/ood.npz    per layer: mean, precision matrix, val scale; the threshold (arrays only, read with allow_pickle=False)
    RUN/ood.json   method, threshold, and the measured shares flagged: test, and sets that are not chest X-rays
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cxrlab.errors import RunDirError
from cxrlab.files import atomic_write_bytes, atomic_write_json

VAL_ACCEPT = 0.99  # share of val images each threshold accepts
METHOD = "mahalanobis over every feature block and the pixels, largest val-scaled distance"
NPZ, JSON = "ood.npz", "ood.json"
MESSAGE = "the image does not look like the images the model was trained on; it is not classified"


def feature_blocks(model: nn.Module) -> list[nn.Module]:
    """The blocks whose outputs the check looks at: torchvision's ``features`` children, or ResNet's four stages."""
    net = model[1] if isinstance(model, nn.Sequential) and len(model) == 2 and not hasattr(model, "features") else model
    if hasattr(net, "features"):
        return list(net.features.children())
    return [net.layer1, net.layer2, net.layer3, net.layer4]


@torch.no_grad()
def layer_features(model: nn.Module, images: torch.Tensor, cfg, device, batch: int = 512) -> list[np.ndarray]:
    """uint8 (N, S, S) -> per feature block the channel means of its output (N, C), then the pixels (N, S*S) in [0, 1]."""
    from cxrlab.data.augment import eval_batch

    model.eval()
    blocks = feature_blocks(model)
    store: list[torch.Tensor] = []
    hooks = [b.register_forward_hook(lambda _m, _i, out: store.append(out.float().mean((2, 3)).cpu())) for b in blocks]
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    per_layer: list[list[np.ndarray]] = [[] for _ in blocks]
    try:
        for i in range(0, len(images), batch):
            store.clear()
            model(eval_batch(images[i : i + batch], cfg.norm_mean, cfg.norm_std, device).contiguous(memory_format=memory_format))
            for k, f in enumerate(store):
                per_layer[k].append(f.numpy())
    finally:
        for hook in hooks:
            hook.remove()
    pixels = images.reshape(len(images), -1).numpy().astype(np.float32) / 255
    return [np.concatenate(f) if f else np.empty((0, 0), np.float32) for f in per_layer] + [pixels]


@dataclass
class OODCheck:
    means: list[np.ndarray]  # per layer (D,)
    precisions: list[np.ndarray]  # per layer (D, D): the inverse of the shrunk covariance
    scales: list[float]  # per layer: the distance VAL_ACCEPT of val images stay under
    threshold: float

    def scores(self, layers: list[np.ndarray]) -> np.ndarray:
        """The largest val-scaled squared Mahalanobis distance over layers; higher is less like the training images."""
        ratios = []
        for f, mean, precision, scale in zip(layers, self.means, self.precisions, self.scales):
            centred = np.asarray(f, dtype=np.float64) - mean
            ratios.append(np.einsum("nd,de,ne->n", centred, precision, centred) / scale)
        return np.max(ratios, axis=0)

    def flags(self, layers: list[np.ndarray]) -> np.ndarray:
        return self.scores(layers) > self.threshold

    def save(self, run_path: Path) -> None:
        arrays = {"threshold": np.float64(self.threshold), "scales": np.array(self.scales)}
        for k, (mean, precision) in enumerate(zip(self.means, self.precisions)):
            arrays[f"mean{k}"], arrays[f"precision{k}"] = mean.astype(np.float32), precision.astype(np.float32)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        atomic_write_bytes(Path(run_path) / NPZ, buffer.getvalue())

    @classmethod
    def load(cls, run_path: Path) -> "OODCheck | None":
        path = Path(run_path) / NPZ
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as saved:
                layers = len(saved["scales"])
                return cls([saved[f"mean{k}"].astype(np.float64) for k in range(layers)],
                           [saved[f"precision{k}"].astype(np.float64) for k in range(layers)],
                           [float(v) for v in saved["scales"]], float(saved["threshold"]))
        except (OSError, KeyError, ValueError) as exc:
            raise RunDirError(f"{path} is damaged ({exc}); fit it again with: cxrlab ood {path.parent}") from None


def fit_check(train_layers: list[np.ndarray], val_layers: list[np.ndarray]) -> OODCheck:
    """Per layer a Gaussian of the training features (Ledoit-Wolf covariance), scaled on val; the threshold from val."""
    from sklearn.covariance import LedoitWolf

    means, precisions, scales = [], [], []
    for train, val in zip(train_layers, val_layers):
        train = np.asarray(train, dtype=np.float64)
        mean = train.mean(0)
        precision = LedoitWolf(assume_centered=True).fit(train - mean).precision_
        centred = np.asarray(val, dtype=np.float64) - mean
        distances = np.einsum("nd,de,ne->n", centred, precision, centred)
        means.append(mean)
        precisions.append(precision)
        scales.append(float(max(np.quantile(distances, VAL_ACCEPT), 1e-12)))
    check = OODCheck(means, precisions, scales, 0.0)
    check.threshold = float(np.quantile(check.scores(val_layers), VAL_ACCEPT))
    return check


def flagged_share(check: OODCheck, layers: list[np.ndarray]) -> float:
    return float(check.flags(layers).mean()) if len(layers[-1]) else float("nan")


def fit_run_check(model: nn.Module, cfg, data, device, run_path: Path, echo=print) -> dict:
    """Fit the check on a run's train split, set its threshold on val, measure it (test, and sets that are not chest
    X-rays), save RUN/ood.npz and RUN/ood.json; returns the measurements (the summary's ``ood``)."""
    from cxrlab.data.datasets import get_dataset
    from cxrlab.evaluation.ood_sets import ood_sets

    started = time.perf_counter()
    train, val = data.splits["train"], data.splits["val"]
    check = fit_check(layer_features(model, train.images, cfg, device), layer_features(model, val.images, cfg, device))
    check.save(run_path)
    report = {"method": METHOD, "threshold": check.threshold, "val_accepted": VAL_ACCEPT,
              "flagged": {},  # share given no class: flagged by the check, or (constant images) refused before it
              }
    if "test" in data.splits:
        report["flagged"]["test split (chest X-rays)"] = flagged_share(check, layer_features(model, data.splits["test"].images, cfg, device))
    for group, sets in ood_sets(cfg.size, get_dataset(cfg.dataset).preprocess, cfg.seed).items():
        for name, images in sets.items():
            flat = images.reshape(len(images), -1)
            blank = flat.min(1) == flat.max(1)  # refused before the model (BlankImage): no class either
            flagged = check.flags(layer_features(model, torch.from_numpy(images), cfg, device))
            report["flagged"][f"{group}: {name}"] = float((flagged | blank).mean())
            report.setdefault("images", {})[f"{group}: {name}"] = len(images)
    report["seconds"] = time.perf_counter() - started
    atomic_write_json(Path(run_path) / JSON, report)
    echo(f"out-of-distribution check (threshold {check.threshold:.2f} accepts {VAL_ACCEPT:.0%} of val): flagged "
         + "; ".join(f"{name} {share:.1%}" for name, share in report["flagged"].items()))
    return report

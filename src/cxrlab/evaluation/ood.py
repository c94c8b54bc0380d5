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

import hashlib
import io
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cxrlab.console import logger
from cxrlab.core.runs import RunDir
from cxrlab.errors import RunDirError
from cxrlab.files import atomic_write_bytes, atomic_write_json
from cxrlab.models.probe import FeatureProbe

log = logger(__name__)

VAL_ACCEPT = 0.99  # share of val images each threshold accepts
METHOD = "mahalanobis over every feature block and the pixels, largest val-scaled distance"
MESSAGE = "the image does not look like the images the model was trained on; it is not classified"


def pixel_layer(images: torch.Tensor, size: int) -> torch.Tensor:
    """(N, 1, size, size) in [0, 1] -> (N, side * side): the pixels, averaged down to at most 32 x 32 (28 px: as they
    are), so that the pixel Gaussian stays small (a 224 px covariance would be 50,176 x 50,176). ``size`` is a plain
    int, so an exported graph holds the pooling as a constant."""
    side = next(s for s in range(min(size, 32), 0, -1) if size % s == 0)
    return (F.avg_pool2d(images, size // side) if side < size else images).flatten(1)


@torch.no_grad()
def probe_outputs(probe: FeatureProbe, images: torch.Tensor, cfg, device) -> tuple[np.ndarray, list[np.ndarray]]:
    """uint8 (N, S, S) -> (logits (N, outputs), [per feature block the channel means (N, C), then the pixels
    (pixel_layer)]): the check's layers and the model's output from the same pass."""
    from cxrlab.core.device import autocast
    from cxrlab.data.augment import eval_batch

    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    logits, per_layer = [], [[] for _ in range(probe.blocks)]
    with torch.inference_mode(), autocast(cfg, device):
        for i in range(0, len(images), cfg.eval_batch_size):
            out, blocks = probe(
                eval_batch(images[i : i + cfg.eval_batch_size], cfg.norm_mean, cfg.norm_std, device).contiguous(memory_format=memory_format)
            )
            logits.append(out.float().cpu().numpy())
            for k, f in enumerate(blocks):
                per_layer[k].append(f.cpu().numpy())
    pixels = pixel_layer(images[:, None].float() / 255, images.shape[-1]).numpy()
    layers = [np.concatenate(f) if f else np.empty((0, 0), np.float32) for f in per_layer] + [pixels]
    return (np.concatenate(logits) if logits else np.empty((0, cfg.num_outputs), np.float32)), layers


def layer_features(model: nn.Module, images: torch.Tensor, cfg, device) -> list[np.ndarray]:
    """uint8 (N, S, S) -> the check's layers (probe_outputs) for a model or its FeatureProbe."""
    return probe_outputs(model if isinstance(model, FeatureProbe) else FeatureProbe(model), images, cfg, device)[1]


class ScoredModel(nn.Module):
    """normalised image (N, 1, S, S) -> (logits, check score (N,)): the model and the check as one graph (float32),
    which is how the check travels inside model.onnx."""

    def __init__(self, probe: FeatureProbe, check: OODCheck, norm_mean: float, norm_std: float, size: int):
        super().__init__()
        self.probe, self.norm_mean, self.norm_std, self.size = probe, norm_mean, norm_std, size
        self.layers = len(check.means)
        for k, (mean, precision, scale) in enumerate(zip(check.means, check.precisions, check.scales)):
            self.register_buffer(f"mean{k}", torch.tensor(mean, dtype=torch.float32))
            self.register_buffer(f"precision{k}", torch.tensor(precision, dtype=torch.float32))
            self.register_buffer(f"scale{k}", torch.tensor(scale, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, blocks = self.probe(x)
        layers = [*blocks, pixel_layer(x.float() * self.norm_std + self.norm_mean, self.size)]
        ratios = []
        for k, f in enumerate(layers):
            centred = f - getattr(self, f"mean{k}")
            ratios.append((centred @ getattr(self, f"precision{k}") * centred).sum(1) / getattr(self, f"scale{k}"))
        return logits, torch.stack(ratios, 1).amax(1)


def squared_mahalanobis(centred: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """(N, D) centred features, (D, D) precision -> (N,) squared distances; one matrix product (BLAS), where a
    three-operand einsum loops in C over N x D x D."""
    return ((centred @ precision) * centred).sum(1)


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
            ratios.append(squared_mahalanobis(np.asarray(f, dtype=np.float64) - mean, precision) / scale)
        return np.max(ratios, axis=0)

    def flags(self, layers: list[np.ndarray]) -> np.ndarray:
        return self.scores(layers) > self.threshold

    def save(self, run_path: Path) -> None:
        arrays = {"threshold": np.float64(self.threshold), "scales": np.array(self.scales)}
        for k, (mean, precision) in enumerate(zip(self.means, self.precisions)):
            arrays[f"mean{k}"], arrays[f"precision{k}"] = mean.astype(np.float32), precision.astype(np.float32)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        atomic_write_bytes(RunDir(run_path).ood_arrays, buffer.getvalue())

    @classmethod
    def load(cls, run_path: Path) -> OODCheck | None:
        path = RunDir(run_path).ood_arrays
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as saved:
                layers = len(saved["scales"])
                return cls(
                    [saved[f"mean{k}"].astype(np.float64) for k in range(layers)],
                    [saved[f"precision{k}"].astype(np.float64) for k in range(layers)],
                    [float(v) for v in saved["scales"]],
                    float(saved["threshold"]),
                )
        except (OSError, KeyError, ValueError) as exc:
            raise RunDirError(f"{path} is damaged ({exc}); fit it again with: cxrlab ood {path.parent}") from None


def check_digest(run_path: Path) -> str:
    """sha256 of RUN/ood.npz: an exported model names the check it holds, so a check fitted again is noticed."""
    return hashlib.sha256(RunDir(run_path).ood_arrays.read_bytes()).hexdigest()


def shrunk_precision(centred: np.ndarray) -> np.ndarray:
    """(N, D) centred features -> (D, D) inverse of their Ledoit-Wolf covariance. The shrunk covariance is positive
    definite unless every feature is constant, so a Cholesky solve inverts it, several times faster than the
    eigendecomposition sklearn's estimator uses (benchmarks/README.md); the pseudo-inverse covers the constant case."""
    from scipy.linalg import LinAlgError, cho_factor, cho_solve, pinvh
    from sklearn.covariance import ledoit_wolf

    covariance, _ = ledoit_wolf(centred, assume_centered=True)
    try:
        return cho_solve(cho_factor(covariance), np.eye(len(covariance)))
    except LinAlgError:
        return pinvh(covariance)


def fit_check(train_layers: list[np.ndarray], val_layers: list[np.ndarray]) -> OODCheck:
    """Per layer a Gaussian of the training features (Ledoit-Wolf covariance), scaled on val; the threshold from val."""
    means, precisions, scales = [], [], []
    for train, val in zip(train_layers, val_layers):
        train = np.asarray(train, dtype=np.float64)
        mean = train.mean(0)
        precision = shrunk_precision(train - mean)
        distances = squared_mahalanobis(np.asarray(val, dtype=np.float64) - mean, precision)
        means.append(mean)
        precisions.append(precision)
        scales.append(float(max(np.quantile(distances, VAL_ACCEPT), 1e-12)))
    check = OODCheck(means, precisions, scales, 0.0)
    check.threshold = float(np.quantile(check.scores(val_layers), VAL_ACCEPT))
    return check


def flagged_share(check: OODCheck, layers: list[np.ndarray]) -> float:
    return float(check.flags(layers).mean()) if len(layers[-1]) else float("nan")


def fit_run_check(model: nn.Module, cfg, data, device, run_path: Path) -> dict:
    """Fit the check on a run's train split, set its threshold on val, measure it (test, and sets that are not chest
    X-rays), save RUN/ood.npz and RUN/ood.json; returns the measurements (the summary's ``ood``)."""
    from cxrlab.data.datasets import get_dataset
    from cxrlab.evaluation.ood_sets import ood_sets

    started = time.perf_counter()
    train, val = data.splits["train"], data.splits["val"]
    probe = FeatureProbe(model)
    check = fit_check(layer_features(probe, train.images, cfg, device), layer_features(probe, val.images, cfg, device))
    check.save(run_path)
    report = {
        "method": METHOD,
        "threshold": check.threshold,
        "val_accepted": VAL_ACCEPT,
        "flagged": {},  # share given no class: flagged by the check, or (constant images) refused before it
    }
    if "test" in data.splits:
        report["flagged"]["test split (chest X-rays)"] = flagged_share(
            check, layer_features(probe, data.splits["test"].images, cfg, device)
        )
    for group, sets in ood_sets(cfg.size, get_dataset(cfg.dataset).preprocess, cfg.seed).items():
        for name, images in sets.items():
            flat = images.reshape(len(images), -1)
            blank = flat.min(1) == flat.max(1)  # refused before the model (BlankImage): no class either
            flagged = check.flags(layer_features(probe, torch.from_numpy(images), cfg, device))
            report["flagged"][f"{group}: {name}"] = float((flagged | blank).mean())
            report.setdefault("images", {})[f"{group}: {name}"] = len(images)
    report["seconds"] = time.perf_counter() - started
    atomic_write_json(RunDir(run_path).ood_report, report)
    log.info(
        f"out-of-distribution check (threshold {check.threshold:.2f} accepts {VAL_ACCEPT:.0%} of val): flagged "
        + "; ".join(f"{name} {share:.1%}" for name, share in report["flagged"].items())
    )
    return report

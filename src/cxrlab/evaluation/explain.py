"""Grad-CAM explanations with pytorch-grad-cam.

Which layer: at 28 px the last feature map is 2x2 (MobileNetV3, EfficientNet-B0) or 1x1 (DenseNet-121), and a
Grad-CAM of a 1x1 map is one constant. cxrlab takes, per model and image size, the deepest feature block whose
map is still at least 7x7 (found by a forward pass, so it holds for every --size): at 28 px MobileNetV3-L
features.6, EfficientNet-B0 features.3, DenseNet-121 denseblock2 and ResNet-18 layer3 (its stem does not
downsample); at 224 px the last block (7x7).
"""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget
from torch import nn

from cxrlab.data.augment import eval_batch
from cxrlab.data.task import data_label, task_data
from cxrlab.errors import ConfigError, ImageFileError
from cxrlab.evaluation import plots
from cxrlab.evaluation.inference import TrainedModel, plain_copy
from cxrlab.evaluation.operating_point import REFER
from cxrlab.evaluation.predict import predict_images
from cxrlab.evaluation.scoring import positive_probability, predicted_class
from cxrlab.files import atomic_write_bytes
from cxrlab.limits import DEFAULT_MAX_PIXELS
from cxrlab.models.registry import feature_blocks

MIN_MAP = 7  # smallest useful Grad-CAM map side
DISPLAY = 224  # overlays are drawn at this size (28 px is too small to read)


def cam_layer(model: nn.Module, size: int) -> tuple[str, nn.Module]:
    """The deepest feature block whose output map is at least MIN_MAP x MIN_MAP for ``size`` px input."""
    blocks = feature_blocks(model)
    sides: dict[str, int] = {}
    hooks = [block.register_forward_hook(lambda _m, _i, out, name=name: sides.__setitem__(name, out.shape[-1])) for name, block in blocks]
    try:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 1, size, size, device=next(model.parameters()).device))
        model.train(was_training)
    finally:
        for h in hooks:
            h.remove()
    chosen = [(name, block) for name, block in blocks if sides.get(name, 0) >= min(MIN_MAP, size)]
    return chosen[-1]


class Explainer:
    """Grad-CAM for a trained run. Thread-safe: Grad-CAM hooks the model, so one explanation runs at a time."""

    def __init__(self, trained: TrainedModel):
        if trained.cfg.task != "binary":
            raise ConfigError("Grad-CAM explanations are for binary-task runs (one logit per image)")
        self.trained = trained
        # Grad-CAM needs gradients in float32 and plain NCHW; a copy leaves the serving model untouched.
        self.model = plain_copy(trained.model)
        self.layer_name, layer = cam_layer(self.model, trained.cfg.size)
        self.cam = GradCAM(model=self.model, target_layers=[layer])
        self._lock = threading.Lock()

    def heatmaps(self, images: torch.Tensor, explained: list[str] | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """uint8 (N, S, S) -> (Grad-CAM maps (N, S, S) in [0, 1], P(positive class), the classes explained).
        Each map explains ``explained`` (default: the class at the run's single threshold): evidence for it is hot."""
        cfg, trained = self.trained.cfg, self.trained
        x = eval_batch(images, cfg.norm_mean, cfg.norm_std, trained.device)
        with self._lock:
            with torch.no_grad():
                p1 = torch.sigmoid(self.model(x)[:, 0]).cpu().numpy()
            p_positive = positive_probability(p1, trained.classes, cfg.positive)
            names = explained or [predicted_class(p, trained.threshold, trained.classes, cfg.positive) for p in p_positive]
            predicted = [trained.classes.index(name) for name in names]
            # the target scores the logit (class 1) or its negative (class 0)
            maps = self.cam(input_tensor=x, targets=[BinaryClassifierOutputTarget(c) for c in predicted])
        return maps, p_positive, [trained.classes[c] for c in predicted]


def overlay(image: np.ndarray, heat: np.ndarray, side: int = DISPLAY) -> np.ndarray:
    gray = np.asarray(Image.fromarray(image).resize((side, side), Image.BILINEAR), dtype=np.float32) / 255
    heat = np.asarray(Image.fromarray((heat * 255).astype(np.uint8)).resize((side, side), Image.BILINEAR), dtype=np.float32) / 255
    return show_cam_on_image(np.repeat(gray[..., None], 3, axis=2), heat, use_rgb=True, image_weight=0.6)


def png_bytes(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def val_grid(explainer: Explainer, path: Path, count: int = 8, seed: int = 0, answerer=None) -> Path:
    """Random val images (fixed seed) above their Grad-CAM overlays, titled with truth, the answer (the run's, or
    ``answerer``'s: a study's entry) and P."""
    trained, cfg = explainer.trained, explainer.trained.cfg
    data = task_data(cfg, splits=("val",))
    val = data.splits["val"]
    pick = np.sort(np.random.default_rng(seed).choice(len(val), size=min(count, len(val)), replace=False))
    images = val.images[torch.from_numpy(pick)]
    answers = predict_images(answerer or trained, images.numpy(), [f"val[{i}]" for i in pick])  # as predict answers each
    maps, probs, _ = explainer.heatmaps(images, [a.label or cfg.positive for a in answers])  # refer: the positive class's evidence
    truth = [trained.classes[int(t)] for t in val.targets[torch.from_numpy(pick)]]
    return plots.gradcam_grid(
        images.numpy(),
        [overlay(i, m) for i, m in zip(images.numpy(), maps)],
        truth,
        [a.answer for a in answers],
        probs,
        cfg.positive,
        Path(path),
        f"{cfg.model}: Grad-CAM on random val images (layer {explainer.layer_name})",
        data_label(data.provenance),
    )


@dataclass
class Explanation:
    path: str
    label: str | None = None  # the class answered, as predict answers it (None: referred)
    probability: float | None = None  # P(positive class)
    overlay: Path | None = None  # the written PNG
    error: str | None = None
    referred: bool = False  # no class: flagged by the out-of-distribution check (no overlay) or inside the refer band
    reason: str | None = None
    explained: str | None = None  # the class whose evidence the overlay shows (a referred image: the positive class)

    @property
    def answer(self) -> str | None:
        return REFER if self.referred else self.label


def explain_image(explainer: Explainer, gray: np.ndarray, name: str, answerer=None) -> tuple[Explanation, bytes | None]:
    """One prepared image (uint8 (S, S)) -> its Explanation and overlay PNG. The class is the one predict answers, by
    the same route (the run's backend, or ``answerer``: a study's entry); an image the out-of-distribution check
    flags is referred, with no overlay."""
    answer = predict_images(answerer or explainer.trained, gray[None], [name])[0]
    if answer.in_distribution is False:
        return Explanation(name, referred=True, reason=f"not explained: {answer.reason}"), None
    explained = answer.label or explainer.trained.cfg.positive
    maps, _, _ = explainer.heatmaps(torch.from_numpy(gray[None]), [explained])
    found = Explanation(name, answer.label, answer.probability, referred=answer.referred, reason=answer.reason, explained=explained)
    return found, png_bytes(overlay(gray, maps[0]))


def explain_files(
    explainer: Explainer, paths: list[str], out: Path, max_pixels: int = DEFAULT_MAX_PIXELS, answerer=None
) -> list[Explanation]:
    """One overlay PNG per readable image, OUT/<stem>_gradcam.png, its class as ``explain_image`` decides it;
    unreadable files get an error, the rest go on."""
    results = []
    for path in paths:
        try:
            gray = explainer.trained.load(path, max_pixels)
        except ImageFileError as exc:
            results.append(Explanation(str(path), error=str(exc)))
            continue
        found, png = explain_image(explainer, gray, str(path), answerer)
        if png is not None:
            found.overlay = Path(out) / f"{Path(path).stem}_gradcam.png"
            atomic_write_bytes(found.overlay, png)
        results.append(found)
    return results

"""What every request of the web service shares: one trained run, loaded once through the API (``load_run``) with
the backend and threads the server was started with, so /predict, /explain and /model answer from one model."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

import cxrlab
from cxrlab.api import SiteEntry, StudyEntry, is_site, load_answerer, load_run, names_an_entry
from cxrlab.config import PUBLIC_OPTIONS
from cxrlab.errors import ConfigError, ImageFileError, ImageTooLarge
from cxrlab.limits import DEFAULT_MAX_PIXELS

DISCLAIMER = (
    "Decision support only, not a diagnosis: a research model's output for a qualified reader to weigh. "
    "It must not be the basis of a clinical decision on its own."
)
PHANTOM_NOTE = "This model was trained on PHANTOM (synthetic) data: its outputs mean nothing clinically."
PUBLIC_DATA = ("dataset", "kind", "md5", "official_md5", "classes", "counts")
PAGE_METRICS = ("roc_auc", "sensitivity", "specificity", "referred")  # a study entry's test numbers on the page


class OutOfDistribution(ImageFileError):
    """Not explained: the run's check flags the image as unlike the training images (422)."""


class RequestTooLarge(Exception):
    """A request over one of its limits (files, decoded pixels): 413."""


class Service:
    """What every request shares: the model (loaded once), its explainer and the response constants."""

    def __init__(
        self,
        run_path,
        backend: str = "auto",
        device: str | None = "cpu",
        max_pixels: int = DEFAULT_MAX_PIXELS,
        threads: int | None = None,
        entry: str | None = None,
        seed: int | None = None,
    ):
        """``run_path``: a run, a compare study's folder whose ``entry`` (default its headline) for ``seed`` (default
        its first) answers, as its choices wrote it down, or a site folder (its entry, by the site's operating point)."""
        self.entry, self.site = None, None
        if is_site(run_path) or names_an_entry(run_path, entry, seed):
            self.run = load_answerer(run_path, entry, seed, backend, device)
            self.site = self.run if isinstance(self.run, SiteEntry) else None
            source = self.site.source if self.site else self.run
            self.entry = source if isinstance(source, StudyEntry) else None
        else:
            self.run = load_run(run_path, backend, device, threads)
        if self.run.config.task != "binary":
            raise ConfigError("the service serves binary-task runs (one class and probability per image)")
        self.trained = self.run.trained()
        self.backend = self.trained.backend
        self.max_pixels = max_pixels
        self.explainer = self.run.explainer()  # Grad-CAM's own fp32 copy; the class it explains comes from the backend
        first = self.trained.first.run if self.entry else self.trained.run
        finished = first.read_json(first.summary)["finished"]
        what = f"{self.entry.name} of study {Path(run_path).name}" if self.entry else Path(first.path).name
        what += f" at site {self.site.record['site']}" if self.site else ""
        self.version = f"{what} (finished {finished}, cxrlab {cxrlab.__version__})"

    def decode(self, name: str, data: bytes, budget: list[int] | None = None) -> np.ndarray:
        """Upload bytes -> the model's input; ``budget`` (a one-item list: pixels left in this request) is spent."""
        limit = self.max_pixels if budget is None else min(self.max_pixels, budget[0])
        try:
            image, pixels = self.run.decode(data, name, limit)
        except ImageTooLarge:
            if budget is not None and budget[0] < self.max_pixels:
                raise RequestTooLarge(
                    f"{name}: this request's images together are over its limit of decoded pixels; send fewer or smaller images per request"
                ) from None
            raise
        if budget is not None:
            budget[0] -= pixels
        return image

    def predict(self, name: str, gray: np.ndarray) -> dict:
        """One image's answer: its class and P(positive), or, when the run's check flags the image as unlike the
        training images, no class (``in_distribution`` false, the score and threshold, and why)."""
        t = self.trained
        result = self.run.predict(gray)[0]  # the answer, decided where every route decides it (evaluation/predict.py)
        answer = {
            "filename": name,
            "answer": result.answer,  # a class, or "refer": for a reader to judge (flagged, or inside the refer band)
            "in_distribution": result.in_distribution,  # null: this run has no check (fit one with cxrlab ood RUN)
            "class": result.label,  # null when referred
            "probability": result.probability,
            "probability_of": t.cfg.positive,
            "other_class": t.negative,
            "threshold": t.threshold,
            "decision": result.decision,
            "rule_out": t.point.rule_out,
            "rule_in": t.point.rule_in,
            "answered_by": result.answered_by,
            "no_band": None if t.point.has_band else (t.point.band_error or "none was chosen for this model"),
            "model": t.cfg.model,
            "model_version": self.version,
            "backend": self.backend,
            "trained_on_phantom": t.is_phantom,
            "disclaimer": DISCLAIMER + (" " + PHANTOM_NOTE if t.is_phantom else ""),
        }
        if result.ood_score is not None:
            answer.update(ood_score=result.ood_score, ood_threshold=result.ood_threshold)
        if result.message:
            answer["message"] = result.message
        return answer

    def explain(self, name: str, gray: np.ndarray) -> bytes:
        """The overlay of the class /predict answers (decided by the same route); for an image in the refer band, the
        evidence for the positive class."""
        found, png = self.run.explain_image(gray, name)
        if png is None:
            raise OutOfDistribution(f"{name}: {found.reason}")
        return png

    def task_line(self) -> str:
        """What the model tells apart and how an upload is prepared, in the run's own words."""
        t = self.trained
        how = "center-cropped to a square" if t.preprocess == "center-crop" else "resized"
        what = f"Study entry {t.name} (seed {t.seed}), as its study chose it; {self.entry.seal}. " if self.entry else ""
        if self.site:  # the answering point is the site's, not the study's
            what += f"Answers by the {self.site.site_line}: {t.point.describe()}. "
        if self.entry and self.entry.scored:  # the numbers the report gives for this entry, from its comparison.csv row
            row = self.entry.metrics()
            numbers = ", ".join(f"{k.replace('_', ' ')} {float(row[k]):.3f}" for k in PAGE_METRICS)
            what += f"On test{', at the study’s own operating point' if self.site else ''}: {numbers}. "
        return (
            f"{what}{t.cfg.model} trained on {t.dataset_title}: {t.cfg.positive} vs {t.negative}. "
            f"Each image is converted to grayscale, {how} and scaled to {t.cfg.size} x {t.cfg.size} px, as the training images were."
        )

    def model_card(self) -> dict:
        """What a reader needs to judge the model; nothing of the server's file system and no secret."""
        cfg = self.trained.cfg
        run = self.trained.first.run if self.entry else self.trained.run
        data = run.read_json(run.data)
        card = {
            "model": cfg.model,
            "version": self.version,
            "backend": self.backend,
            "threads": self.trained.threads or os.cpu_count(),
            "gradcam_layer": self.explainer.layer_name,
            "dataset": self.trained.dataset_title,
            "preprocessing": ("center-crop to the short side, then " if self.trained.preprocess == "center-crop" else "")
            + f"resize to {cfg.size} x {cfg.size} px",
            "max_image_megapixels": self.max_pixels / 1e6,
            "classes": self.trained.classes,
            "positive_class": cfg.positive,
            "threshold": self.trained.threshold,
            "operating_point": self.trained.point.to_dict(),
            "decision": self.trained.cfg.decision,
            "trained_on_phantom": self.trained.is_phantom,
            "ood_check": run.read_json(run.summary).get("ood"),  # null: the run has none (cxrlab ood RUN fits one)
            "data": {k: data[k] for k in PUBLIC_DATA if k in data},
            # a study's run has no test metrics of its own: its test is scored for the study (sealed)
            "metrics": {split: run.read_json(run.metrics(split)) for split in ("val", "test") if run.metrics(split).is_file()},
            "training": {k: getattr(cfg, k) for k in PUBLIC_OPTIONS},
            "disclaimer": DISCLAIMER,
        }
        if self.entry:  # the study's numbers for this entry, not one run's, and how its test was kept
            model = self.trained
            card.update(
                model=model.name,
                entry={
                    "name": model.name,
                    "seed": model.seed,
                    "runs": [m.run.path.name for m in model.members],
                    "tta_views": model.views,
                    "weights": None if model.weights is None else dict(zip((m.cfg.model for m in model.members), model.weights.tolist())),
                    "study": model.study,
                    "test": self.entry.seal,
                },
                ood_check={m.run.path.name: m.run.read_json(m.run.summary).get("ood") for m in model.members},
                metrics={"test": self.entry.metrics() if self.entry.scored else "sealed: not scored yet"},
            )
        if self.site:
            card["site"] = {k: self.site.record[k] for k in ("site", "chosen", "rule", "on_these_images")}
            card["site"]["data"] = {k: v for k, v in self.site.record["data"].items() if k != "excluded"}
            card["site"]["answers_by"] = self.site.site_line
        return card

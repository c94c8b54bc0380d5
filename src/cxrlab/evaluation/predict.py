"""Predictions for image files with a trained run: class and probability per file, errors per file."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from cxrlab.errors import ImageFileError
from cxrlab.evaluation.inference import TrainedModel
from cxrlab.evaluation.ood import MESSAGE as OOD_MESSAGE
from cxrlab.evaluation.operating_point import POSITIVE, REFER, REFERRED
from cxrlab.evaluation.scoring import negative_class, positive_probability
from cxrlab.limits import DEFAULT_MAX_PIXELS


@dataclass
class Prediction:
    """One image's answer, the one object the CLI prints, ``--out`` writes and the service serialises: the class or
    refer, P(positive), the decision used and its thresholds, the out-of-distribution verdict and what answered."""

    path: str
    label: str | None = None  # binary: the class answered (None when referred); multilabel: the labels at or over 0.5, or "no finding"
    probability: float | None = None  # binary: P(positive class); multilabel: the highest label probability
    probabilities: dict[str, float] = field(default_factory=dict)  # per class (binary: the positive one only)
    error: str | None = None
    in_distribution: bool | None = None  # False: flagged by the run's check, no class given; None: the run has no check
    ood_score: float | None = None
    ood_threshold: float | None = None
    referred: bool = False  # no class: the image is for a reader to judge (flagged by the check, or inside the refer band)
    reason: str | None = None  # why it was referred
    decision: str | None = None  # binary: 'refer' (the refer band) or 'single' (the single threshold), as used
    threshold: float | None = None  # the single threshold
    rule_out: float | None = None  # the refer band, when the decision used it
    rule_in: float | None = None
    answered_by: str | None = None  # the run or study entry, and the backend

    def to_dict(self) -> dict:
        """The answer as one flat record (JSON, a CSV row): every field, and ``answer``."""
        from dataclasses import asdict

        return {"file": self.path, "answer": self.answer, **{k: v for k, v in asdict(self).items() if k != "path"}}

    @property
    def answer(self) -> str | None:
        """The class, or 'refer'; None for a file that could not be read."""
        return REFER if self.referred else self.label

    @property
    def message(self) -> str | None:
        return self.reason


def predict_files(
    trained: TrainedModel, paths: list[str], max_pixels: int = DEFAULT_MAX_PIXELS, decision: str | None = None
) -> list[Prediction]:
    """One Prediction per path, in order; unreadable or oversized files get an error and do not stop the others."""
    results = [Prediction(str(p)) for p in paths]
    images, ok = [], []
    for i, path in enumerate(paths):
        try:
            images.append(trained.load(path, max_pixels))
            ok.append(i)
        except ImageFileError as exc:
            results[i].error = str(exc)
    if images:
        for i, result in zip(ok, predict_images(trained, np.stack(images), [str(paths[i]) for i in ok], decision)):
            results[i] = result
    return results


def predict_images(trained: TrainedModel, images: np.ndarray, names: list[str], decision: str | None = None) -> list[Prediction]:
    """One Prediction per uint8 (S, S) image already at the run's size. ``decision``: 'refer' or 'single' (default:
    the run's config); a run without a refer band answers at its single threshold."""
    cfg = trained.cfg
    batch = torch.from_numpy(images)
    probs, scores = trained.predict(batch)
    results = []
    for i, (name, p) in enumerate(zip(names, probs)):
        result = Prediction(name, answered_by=trained.answered_by)
        if scores is not None:
            result.ood_score, result.ood_threshold = float(scores[i]), trained.ood.threshold
            result.in_distribution = bool(scores[i] <= trained.ood.threshold)
            if not result.in_distribution:  # not like the training images: no class, no probability to misread
                result.referred, result.reason = True, OOD_MESSAGE
                if trained.point is not None:
                    decide_by(result, trained.point, decision or cfg.decision)
                results.append(result)
                continue
        if cfg.task == "multilabel":
            result.probabilities = {label: float(v) for label, v in zip(trained.classes, p)}
            found = [label for label, v in result.probabilities.items() if v >= trained.threshold]
            result.label = ", ".join(found) or "no finding"
            result.probability = float(p.max())
        else:
            result.probability = float(positive_probability(p[0], trained.classes, cfg.positive))
            result.probabilities = {cfg.positive: result.probability}
            answer(result, trained, decision or cfg.decision)
        results.append(result)
    return results


def answer(result: Prediction, trained: TrainedModel, decision: str) -> None:
    """The class for P(positive) by the run's operating point, or refer inside the band, saying why: the one place a
    probability becomes an answer. A point without a band answers at its single threshold, and says so."""
    point, positive = trained.point, trained.cfg.positive
    decide_by(result, point, decision)
    named = answer_names(point, np.array([result.probability]), trained.classes, positive, decision)[0]
    if named == REFER:
        result.referred = True
        result.reason = (
            f"P({positive}) {result.probability:.3f} lies between the rule-out threshold {point.rule_out:.3f} and the "
            f"rule-in threshold {point.rule_in:.3f}: too uncertain to answer; refer to a reader"
        )
        return
    result.label = named


def decide_by(result: Prediction, point, decision: str) -> None:
    """Record the decision an answer uses: the refer band where asked and the point has one, else the single threshold."""
    result.decision = decision if point.has_band else "single"
    result.threshold = point.threshold
    if result.decision == "refer":
        result.rule_out, result.rule_in = point.rule_out, point.rule_in


def answer_names(point, probs: np.ndarray, classes: list[str], positive: str, decision: str) -> list[str]:
    """The answer for each P(positive) by the operating point: the positive class, the other class, or refer."""
    negative = negative_class(classes, positive)
    return [REFER if k == REFERRED else positive if k == POSITIVE else negative for k in point.answers(probs, decision)]

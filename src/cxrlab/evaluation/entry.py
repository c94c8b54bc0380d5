"""A study's entry as one deployable unit: a run, a run with test-time augmentation, or the ensemble of one seed's
runs, with the operating point, temperature, TTA views and ensemble weights its study wrote down before test was
read (report/choices.py). It answers an image exactly as the study's scoring step scored it: the same PyTorch
probabilities (the scoring step's route), the same views, weights and thresholds.

Its out-of-distribution check: a single run's own; for the ensemble, an image is flagged when any member's check
flags it (each member's score over its own threshold; flagged above 1), the stricter reading.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cxrlab.evaluation.ensemble import combine
from cxrlab.evaluation.inference import TrainedModel, load_trained, predict_probs, predict_probs_tta
from cxrlab.evaluation.operating_point import OperatingPoint
from cxrlab.evaluation.scoring import negative_class, positive_probability


@dataclass
class UnitThreshold:
    """The ensemble's check: scores are each member's score over its threshold, so the threshold is 1."""

    threshold: float = 1.0


@dataclass
class EntryModel:
    """One entry of a study, loaded: ``predict`` gives what ``TrainedModel.predict`` gives, so every route that
    answers for a run (predict, explain's class, the service) answers for an entry too."""

    name: str
    seed: int
    members: list[TrainedModel]
    views: int  # TTA views (1: none)
    weights: np.ndarray | None  # the ensemble's, one per member; None: equal
    point: OperatingPoint
    temperature: float
    study: str  # the study's folder name and its choices' SHA-256, for ``answered_by``
    backend: str = "pytorch"  # the scoring step's route, so that answers match the report exactly

    @classmethod
    def from_choices(
        cls, folder: Path, chosen: dict, runs: dict, digest: str, device: str | None = None, loaded: dict | None = None
    ) -> EntryModel:
        """``chosen``: the entry's record in choices.json; ``runs``: the choices' run table (tag -> path, MD5s);
        ``loaded``: runs loaded already, by tag (filled as runs load), so that a study's entries share them."""
        loaded = {} if loaded is None else loaded
        for tag in chosen["runs"]:
            if tag not in loaded:
                loaded[tag] = load_trained(folder / runs[tag]["path"], device)
        members = [loaded[tag] for tag in chosen["runs"]]
        weights = None
        if chosen["weights"]:
            weights = np.array([chosen["weights"][m.cfg.model] for m in members])
        return cls(
            chosen["name"],
            chosen["seed"],
            members,
            chosen["tta_views"],
            weights,
            OperatingPoint.from_dict(chosen["point"]),
            chosen["temperature"],
            f"{folder.name}, choices SHA-256 {digest[:12]}",
        )

    @property
    def first(self) -> TrainedModel:
        return self.members[0]

    @property
    def cfg(self):
        """The members' shared data options (size, classes, positive class, decision): the study checked they agree."""
        return self.first.cfg

    @property
    def classes(self) -> list[str]:
        return self.first.classes

    @property
    def threshold(self) -> float:
        return self.point.threshold

    @property
    def is_phantom(self) -> bool:
        return self.first.is_phantom

    @property
    def negative(self) -> str:
        return negative_class(self.classes, self.cfg.positive)

    @property
    def ood(self):
        if any(m.ood is None for m in self.members):
            return None
        return self.first.ood if len(self.members) == 1 else UnitThreshold()

    @property
    def threads(self) -> int | None:
        return self.first.threads

    @property
    def dataset_title(self) -> str:
        return self.first.dataset_title

    @property
    def preprocess(self) -> str:
        return self.first.preprocess

    @property
    def answered_by(self) -> str:
        return f"study entry {self.name} (seed {self.seed}) of {self.study}, {self.backend}"

    def probs(self, images: torch.Tensor) -> np.ndarray:
        """uint8 (N, S, S) -> P(class 1) (N, 1): each member's (with the entry's TTA views), combined by its weights."""
        each = []
        for m in self.members:
            if self.views > 1:
                each.append(predict_probs_tta(m.model, images, m.cfg, m.device, self.views, seed=self.seed))
            else:
                each.append(predict_probs(m.model, images, m.cfg, m.device))
        if len(each) == 1:
            return each[0]
        weights = np.full(len(each), 1 / len(each)) if self.weights is None else self.weights  # None: the mean (cv's fold ensemble)
        positive = [positive_probability(p[:, 0], self.classes, self.cfg.positive) for p in each]
        combined = combine(positive, weights)  # the ensemble is combined as P(positive), as the study scored it
        class1 = combined if self.cfg.positive == self.classes[1] else 1 - combined
        return class1[:, None]

    def predict(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        """(P(class 1) (N, 1), the check's scores (N,) flagged above ``ood.threshold``, or None without checks)."""
        probs = self.probs(images)
        if self.ood is None:
            return probs, None
        if len(self.members) == 1:
            return probs, self.first.ood_scores(images)
        return probs, np.max([m.ood_scores(images) / m.ood.threshold for m in self.members], axis=0)

    def load(self, path, max_pixels: int) -> np.ndarray:
        return self.first.load(path, max_pixels)

    def decode(self, data: bytes, name: str, max_pixels: int):
        return self.first.decode(data, name, max_pixels)

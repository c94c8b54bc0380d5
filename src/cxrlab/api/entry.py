"""A study's entry as one deployable unit, in Python: ``load_entry`` and ``StudyEntry`` (evaluation/entry.py's
EntryModel behind it), answering as ``Run`` does."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cxrlab.api.run import answers, explain_paths
from cxrlab.config import Config
from cxrlab.layout import STUDY_FILES
from cxrlab.limits import DEFAULT_MAX_PIXELS

if TYPE_CHECKING:
    from cxrlab.evaluation.predict import Prediction


def names_an_entry(path, entry: str | None = None, seed: int | None = None) -> bool:
    """Whether predict / serve answer with a study's entry: an entry or seed is named, or ``path`` is a study's folder
    (it holds choices.json); otherwise ``path`` is a run."""
    return entry is not None or seed is not None or (Path(path) / STUDY_FILES["choices"]).is_file()


def load_entry(study, name: str | None = None, seed: int | None = None, device: str | None = None) -> StudyEntry:
    """One entry of a compare study (a model, a model with TTA, or the ensemble: its name as the report writes it;
    default the headline entry) for one seed (default the study's first), as one deployable unit: its runs, TTA
    views, ensemble weights, operating point and checks exactly as the study's choices.json wrote them. Refused
    for an unknown entry (listing the study's entries) and for runs or choices changed since they were written."""
    from cxrlab.errors import ConfigError
    from cxrlab.evaluation.entry import EntryModel
    from cxrlab.report.choices import Seal, entry_key

    seal = Seal(study)
    choices, digest = seal.verified()
    names = list(dict.fromkeys(e["name"] for e in choices["entries"].values()))
    seeds = sorted({e["seed"] for e in choices["entries"].values()})
    if choices["headline"] is None:
        raise ConfigError(f"{study} is a 14-label study: its runs answer one by one (cxrlab predict {study}/runs/<model>-seed<k>)")
    name = name or choices["headline"]["entry"]
    seed = seeds[0] if seed is None else seed
    if entry_key(name, seed) not in choices["entries"]:
        raise ConfigError(f"{study} has no entry {name!r} for seed {seed}; its entries: {', '.join(names)}; seeds {seeds}")
    model = EntryModel.from_choices(Path(study), choices["entries"][entry_key(name, seed)], choices["runs"], digest, device)
    return StudyEntry(Path(study), model, seal.describe(), digest)


@dataclass
class StudyEntry:
    """A study's entry, loaded (``load_entry``): it predicts as a run does, by the study's choices."""

    study: Path
    model: object  # evaluation.entry.EntryModel
    seal: str  # how the study's test was kept and scored
    choices_sha256: str  # of the choices it was loaded by (checked: written, unchanged, runs as chosen)
    _explainer: object = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return f"{self.model.name} (seed {self.model.seed})"

    @property
    def config(self) -> Config:
        """The members' shared data options (size, classes, positive class, decision)."""
        return self.model.cfg

    def trained(self, device: str | None = None):
        return self.model

    def predict(self, images, max_pixels: int = DEFAULT_MAX_PIXELS, decision: str | None = None) -> list[Prediction]:
        """As ``Run.predict``: a class or 'refer' per image, by the entry's operating point and check."""
        return answers(self.model, images, max_pixels, decision)

    def decode(self, data: bytes, name: str, max_pixels: int = DEFAULT_MAX_PIXELS):
        return self.model.decode(data, name, max_pixels)

    def explainer(self):
        """Grad-CAM on the entry's first run (its plain model, on the CPU); the class it explains is the entry's answer."""
        from cxrlab.evaluation.explain import Explainer

        if self._explainer is None:
            self._explainer = Explainer(self.model.first)
        return self._explainer

    def explain_image(self, image, name: str = "image"):
        """As ``Run.explain_image``, the class and check decided by the entry, as its ``predict`` decides them."""
        from cxrlab.evaluation.explain import explain_image

        return explain_image(self.explainer(), image, name, answerer=self.model)

    def explain(self, images, out: str | Path | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> list:
        """As ``Run.explain``, each image's class (or refer) as the entry answers it."""
        return explain_paths(self.explainer(), images, out, max_pixels, answerer=self.model)

    def explain_val(self, path: str | Path, count: int = 8, seed: int = 0) -> Path:
        """As ``Run.explain_val``, titled with the entry's answers."""
        from cxrlab.evaluation.explain import val_grid

        return val_grid(self.explainer(), Path(path), count, seed, answerer=self.model)

    @property
    def scored(self) -> bool:
        """Whether the study's test has been scored (by its sealed step)."""
        from cxrlab.report.choices import Seal

        return Seal(self.study).state.get("state") == "scored"

    def metrics(self) -> dict:
        """The entry's test numbers as the study's report gives them (comparison.csv's row; a cross-validation's
        cv.csv, its test columns); refused while test is sealed."""
        path = self.study / STUDY_FILES["comparison"]
        if not self.scored or not (path.is_file() or (self.study / "cv.csv").is_file()):
            from cxrlab.errors import RunDirError

            raise RunDirError(f"{self.study}'s test is sealed: {self.seal}")
        if not path.is_file():
            with open(self.study / "cv.csv") as fh:
                row = next(r for r in csv.DictReader(fh) if r["entry"] == self.model.name)
            return {"entry": row["entry"], "seed": self.model.seed, **{k[5:]: v for k, v in row.items() if k.startswith("test_")}}
        with open(path) as fh:
            return next(r for r in csv.DictReader(fh) if r["entry"] == self.model.name and int(r["seed"]) == self.model.seed)

    def __repr__(self) -> str:
        return f"StudyEntry({str(self.study)!r}): {self.name}; {self.model.point.describe()}; {self.seal}"

"""A compare study's own options, part of the one schema (config/schema.py): the models, seeds, ensemble, TTA,
folder, recipes and holdout, beyond the training options every run of the study shares. A config file's
``compare:`` section, ``cxrlab compare``'s flags and ``cxrlab.compare``'s keywords are read by the same ``build``."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path

from cxrlab.config.options import Config, from_dict, resolve
from cxrlab.config.schema import build, load_yaml, opt
from cxrlab.errors import ConfigError
from cxrlab.models.architectures import MODEL_NAMES, STUDY_MODELS

ENSEMBLE_RULES = ("equal", "fit", "off")


@dataclass
class Study:
    """What `compare` runs, beyond the training options every run shares."""

    models: list[str] = opt(list(STUDY_MODELS), "models to compare", group="study", choices=MODEL_NAMES, nargs="+")
    seeds: list[int] = opt([0, 1, 2], "seeds per model", group="study", nargs="+")
    # "equal" beat weights fitted on held-out data (docs/results/pneumoniamnist-28)
    ensemble: str | list[float] = opt(
        "equal",
        "'equal', 'fit' (weights fitted on val), 'off', or one weight per model in --models order",
        group="study",
        nargs="+",
        metavar="W",
    )
    # 4 views lowered val loss for all three models (same results README)
    tta: int = opt(4, "test-time augmentation views per image, shown beside each model (0 or 1: off)", group="study", metavar="N")
    out: str = opt("runs/compare", "folder for the runs and the report", group="study", metavar="OUT")
    recipes: dict[str, str] = opt(
        {},
        "a model's own training options over the shared ones: MODEL=FILE (a YAML file such as configs/medmnist_v2.yaml); "
        "in a config file, a mapping of model to options or file",
        group="study",
        action="append",
        metavar="MODEL=FILE",
        flag="--recipe",
    )
    holdout: int = opt(
        0,
        "K > 1: each seed's run trains on the other folds of a stratified K-fold split of train and holds out fold "
        "(seed mod K) for choosing its best epoch and operating point, beside val (0: train on all of train)",
        group="study",
        metavar="K",
    )

    def validate(self) -> Study:
        unknown = [m for m in self.models if m not in MODEL_NAMES]
        if unknown or not self.models or len(set(self.models)) != len(self.models):
            raise ConfigError(f"models must be distinct names from {', '.join(MODEL_NAMES)}, got {self.models}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds must be distinct integers, got {self.seeds}")
        self.ensemble = ensemble_rule(self.ensemble)
        if isinstance(self.ensemble, list):
            normalised_weights(self.ensemble, self.models)
            if len(self.models) < 2:
                raise ConfigError("an ensemble needs at least two models")
        if self.holdout == 1 or self.holdout < 0:
            raise ConfigError(f"holdout must be 0 (off) or a number of folds of at least 2, got {self.holdout}")
        if self.tta < 0:
            raise ConfigError(f"tta must be 0 (off) or a number of views, got {self.tta}")
        if not isinstance(self.recipes, dict) or set(self.recipes) - set(self.models):
            raise ConfigError(f"recipes must map models of the study to options or a YAML file, got {self.recipes!r}")
        self.recipes = {m: load_yaml(r) if isinstance(r, str) else dict(r or {}) for m, r in self.recipes.items()}
        for model, options in self.recipes.items():
            options.pop("model", None)  # the recipe's own model line, if any, names the model it is for
            if {"out", "seed"} & set(options):
                raise ConfigError(f"recipe for {model}: out and seed are set by compare, not by a recipe")
        return self

    def config_for(self, base: Config, model: str, seed: int) -> Config:
        """The resolved config of one run: shared options, the model's recipe on top, then model, seed and run folder."""
        values = {
            **base.to_dict(),
            **self.recipes.get(model, {}),
            "model": model,
            "seed": seed,
            "out": str(Path(self.out) / "runs" / f"{model}-seed{seed}"),
            "sealed": True,  # test is scored once, for the study, after its choices are written
        }
        if self.holdout:
            values.update(cv_folds=self.holdout, cv_fold=seed % self.holdout)
        return resolve(from_dict(values, source=f"recipe for {model}"))

    @property
    def ensemble_on(self) -> bool:
        return self.ensemble != "off" and len(self.models) > 1


STUDY_KEYS = tuple(f.name for f in fields(Study))


def ensemble_rule(value) -> str | list[float]:
    """'equal', 'fit' or 'off', or a list of weights; from YAML (a word or a list) or flags (a list of words)."""
    if isinstance(value, (list, tuple)) and len(value) == 1 and str(value[0]) in ENSEMBLE_RULES:
        value = str(value[0])
    if isinstance(value, str) and value not in ENSEMBLE_RULES:
        value = value.replace(",", " ").split()
    if isinstance(value, str):
        return value
    try:
        return [float(w) for w in value]
    except (TypeError, ValueError):
        raise ConfigError(f"ensemble must be 'equal', 'fit', 'off' or one weight per model, got {value!r}") from None


def normalised_weights(weights: list[float], models: list[str]) -> list[float]:
    """Given weights, one per model, non-negative, normalised to sum 1; a clear error when they do not fit."""
    if len(weights) != len(models):
        raise ConfigError(
            f"{len(weights)} ensemble weights given for {len(models)} models ({', '.join(models)}); give one weight per model, in "
            f"that order"
        )
    if any(w < 0 or not math.isfinite(w) for w in weights) or sum(weights) <= 0:
        raise ConfigError(f"ensemble weights must be non-negative numbers with a positive sum, got {weights}")
    return [w / sum(weights) for w in weights]


def study_from(section: dict | None, overrides: dict, source: str = "config") -> Study:
    """A validated Study from a config file's ``compare:`` section, with flags or keywords on top."""
    section = dict(section or {})
    if set(section) - set(STUDY_KEYS):
        raise ConfigError(
            f"{source}: the compare section takes {', '.join(STUDY_KEYS)}, got {', '.join(sorted(set(section) - set(STUDY_KEYS)))}"
        )
    return build(Study, {**section, **overrides}, source, "cxrlab compare --help").validate()

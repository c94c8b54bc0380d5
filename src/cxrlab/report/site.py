"""A new site: does its batch of images differ from what the entry's operating point was chosen on (``check_site``),
and the operating point re-chosen on the site's own labelled images (``calibrate_site``), written to a site folder
that predict and serve answer with (api/site.py loads it). Neither reads the study's test split.

    DIR/site_check.json, site_scores.png   the check: both tests, EM's share of positives, the verdict, the images
                                           the out-of-distribution check flagged or that could not be read
    DIR/site.json                          the site's operating point, how it was chosen (rule, counts, date, the
                                           data's MD5s) and the entry it came from (its path, name, seed, fingerprint)
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from cxrlab.console import logger
from cxrlab.core.checkpoint import load_weights, save_weights
from cxrlab.data.site import SiteImages, stratified_half
from cxrlab.data.task import data_label, fold_view, task_data
from cxrlab.errors import ConfigError, RunDirError
from cxrlab.evaluation import plots
from cxrlab.evaluation.scoring import positive_probability, positive_view
from cxrlab.evaluation.shift import check_shift
from cxrlab.evaluation.site_point import RULE, AdaptedModel, calibrate
from cxrlab.files import atomic_write_json, file_md5
from cxrlab.layout import SITE_FILE
from cxrlab.training.site_adapt import adapt_batchnorm, fine_tune

log = logger(__name__)

FORMAT = 1


def judged(model, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(P(positive) of each image, whether the out-of-distribution check flags it) by the model's own route."""
    probs, scores = model.predict(torch.from_numpy(images))
    flagged = np.zeros(len(images), dtype=bool) if scores is None else np.asarray(scores) > model.ood.threshold
    return positive_probability(probs[:, 0], model.classes, model.cfg.positive), flagged


def evidence_of(model) -> tuple[np.ndarray, np.ndarray, str, str]:
    """(targets, P(positive), which splits, the data's label) on the evidence the entry's point was chosen on: its held-out fold of
    train (when it holds one out) and val; images its check flags are left out, as at the site."""
    cfg = model.cfg
    data = task_data(cfg, splits=("train", "val") if cfg.cv_folds else ("val",))
    parts = ([("held-out fold", fold_view(data, cfg.cv_folds, cfg.cv_fold).splits["val"])] if cfg.cv_folds else []) + [
        ("val", data.splits["val"])
    ]
    targets, probs = [], []
    for _, part in parts:
        p, flagged = judged(model, part.images.numpy())
        t = positive_view(part.targets.numpy(), np.zeros(len(part)), model.classes, cfg.positive)[0]
        targets.append(t[~flagged])
        probs.append(p[~flagged])
    return np.concatenate(targets), np.concatenate(probs), " + ".join(name for name, _ in parts), data_label(data.provenance)


def check_site(model, site: SiteImages, out: Path | None = None, seed: int = 0) -> dict:
    """The shift check of one batch of site images against the entry's evidence; written to ``out`` when given."""
    probs, flagged = judged(model, site.images)
    if flagged.all():
        raise ConfigError(f"the out-of-distribution check flags all {len(flagged)} site images: nothing to compare with the evidence")
    targets, evidence, what, label = evidence_of(model)
    found = check_shift(targets, evidence, probs[~flagged], model.temperature, model.cfg.positive, seed=seed)
    result = {
        "entry": model.answered_by,
        "evidence": f"{what} ({label})",
        "positive": model.cfg.positive,
        "site_images": len(site.names),
        "flagged_out_of_distribution": {
            "count": int(flagged.sum()),
            "share": float(flagged.mean()),
            "names": [n for n, f in zip(site.names, flagged) if f],
        },
        "unreadable": [{"name": n, "why": w} for n, w in site.excluded],
        **found.to_dict(),
    }
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "site_check.json", result)
        negative = next(c for c in model.classes if c != model.cfg.positive)
        title = f"site check: {found.images} images judged, against the {what}: {found.verdict}"
        plots.site_scores(
            (targets, evidence),
            probs[~flagged],
            found.site_prevalence,
            (negative, model.cfg.positive),
            out / "site_scores.png",
            title,
            label,
        )
    return result


ADAPTATIONS = ("batchnorm", "fine-tune")
ADAPTED = "adapted"  # DIR/adapted/<run>.safetensors: an adapted member's weights


def members_of(model) -> list:
    """A study entry's runs, or the one run."""
    return list(model.members) if hasattr(model, "members") else [model]


def with_members(model, members: list):
    return replace(model, members=members) if hasattr(model, "members") else members[0]


def adapt(model, how: str, site: SiteImages, seed: int = 0) -> tuple[object, dict, SiteImages]:
    """(the model adapted to the site, what was done, the labelled images left to choose the point on). Fine-tuning
    takes a stratified half of the labelled images (``seed``); the point is then chosen on the other half only, so
    that its guarantee rests on images the tuning never saw."""
    members, divided = members_of(model), None
    if how == "batchnorm":
        nets = [adapt_batchnorm(m.model, site.images, m.cfg, m.device) for m in members]
        choose_on = site
    elif how == "fine-tune":
        tune = stratified_half(site.targets, np.random.default_rng(seed))
        nets = [
            fine_tune(m.model, m.cfg, m.device, (site.images[tune], class1(m, site.targets[tune])), training_set(m), seed=seed)
            for m in members
        ]
        choose_on = SiteImages([n for n, k in zip(site.names, tune) if not k], site.images[~tune], site.targets[~tune], site.excluded)
        divided = {
            "seed": seed,
            "fine-tuned on": {"images": int(tune.sum()), "positives": int(site.targets[tune].sum())},
            "point chosen on": {"images": int((~tune).sum()), "positives": int(site.targets[~tune].sum())},
            "rule": "a stratified half of the labelled images tunes the model (6 epochs, Adam 1e-4, each epoch mixed with as "
            "many of the run's training images); the operating point is chosen on the other half only",
        }
    else:
        raise ConfigError(f"unknown adaptation {how!r}: one of {', '.join(ADAPTATIONS)}")
    adapted = with_members(model, [AdaptedModel(m, net) for m, net in zip(members, nets)])
    return adapted, {"kind": how, "divided": divided}, choose_on


def class1(member, positive_targets: np.ndarray) -> np.ndarray:
    """1 = the positive class -> 1 = the model's class 1 (what its output predicts)."""
    return positive_targets if member.cfg.positive == member.classes[1] else 1 - positive_targets


def training_set(member) -> tuple[np.ndarray, np.ndarray]:
    """The run's own training images and class-1 targets (its training folds, when it held one out)."""
    cfg = member.cfg
    data = task_data(cfg, splits=("train",))
    train = (fold_view(data, cfg.cv_folds, cfg.cv_fold) if cfg.cv_folds else data).splits["train"]
    return train.images.numpy(), train.targets.numpy()


def save_adapted(model, out: Path) -> dict:
    """Each adapted member's weights to DIR/adapted/<run>.safetensors; returns their MD5s by run."""
    (out / ADAPTED).mkdir(parents=True, exist_ok=True)
    found = {}
    for m in members_of(model):
        path = out / ADAPTED / f"{m.run.path.name}.safetensors"
        save_weights(m.model, path)
        found[m.run.path.name] = file_md5(path)
    return found


def load_adapted(folder: Path, model, weights: dict):
    """The model with each member's adapted weights from a site folder, checked against their recorded MD5s."""
    members = []
    for m in members_of(model):
        path = Path(folder) / ADAPTED / f"{m.run.path.name}.safetensors"
        if not path.is_file() or file_md5(path) != weights.get(m.run.path.name):
            recorded = weights.get(m.run.path.name)
            raise RunDirError(f"{path}: missing, or not the adapted weights {folder}/site.json records (MD5 {recorded})")
        net = copy.deepcopy(m.model)
        load_weights(net, path)
        members.append(AdaptedModel(m, net.to(m.device).eval()))
    return with_members(model, members)


def calibrate_site(model, site: SiteImages, name: str, data_file: Path, source: dict, out: Path, adaptation: str | None = None) -> dict:
    """Re-choose the model's operating point on the site's labelled images (images its check flags are excluded by
    name), after ``adaptation`` (one of ADAPTATIONS) where asked, and write DIR/site.json; refused, naming how many
    more labelled images are needed, with too few."""
    probs, flagged = judged(model, site.images)
    site, probs = site.exclude(~flagged, ["flagged by the out-of-distribution check"] * len(flagged)), probs[~flagged]
    adapted = None
    if adaptation:  # the adapted model scores the images left to choose on
        model, adapted, site = adapt(model, adaptation, site)
        probs = judged(model, site.images)[0]
    cfg = model.cfg
    evidence = f"site {name} ({len(probs)} labelled images)"
    targets = (cfg.target_sensitivity, cfg.rule_out_sensitivity, cfg.rule_in_specificity, cfg.bound_level)
    found = calibrate(site.targets, probs, *targets, evidence)
    if adapted:
        adapted["weights_md5"] = save_adapted(model, out)
    record = {
        "format": FORMAT,
        "site": name,
        "chosen": time.strftime("%Y-%m-%d %H:%M:%S"),
        "rule": f"{RULE}: single and rule-out thresholds on the site's positives, rule-in on its negatives, each with "
        f"{cfg.bound_level:.0%} confidence that the target holds on the site's next patients",
        "data": {
            "file": data_file.name,
            "file_md5": file_md5(data_file),
            "images_and_labels_md5": hashlib.md5(site.images.tobytes() + site.targets.tobytes()).hexdigest(),
            "images": len(probs),
            "positives": found.positives,
            "negatives": found.negatives,
            "excluded": [{"name": n, "why": w} for n, w in site.excluded],
        },
        "adaptation": adapted,
        "point": found.point.to_dict(),
        "on_these_images": {k: getattr(found, k) for k in ("sensitivity", "sensitivity_lower", "specificity", "specificity_lower")},
        "source": source,
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / SITE_FILE, record)
    for line in found.lines():
        log.info(line)
    return record


def read_site(folder: Path) -> dict:
    path = Path(folder) / SITE_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{folder} is not a site folder: {path} cannot be read ({exc})") from None

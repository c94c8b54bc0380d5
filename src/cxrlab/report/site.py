"""A new site: does its batch of images differ from what the entry's operating point was chosen on (``check_site``),
and the operating point re-chosen on the site's own labelled images (``calibrate_site``), written to a site folder
that predict and serve answer with (api/site.py loads it). Neither reads the study's test split.

    DIR/site_check.json, site_scores.png   the check: both tests, EM's share of positives, the verdict, the images
                                           the out-of-distribution check flagged or that could not be read
    DIR/site.json                          the site's operating point, how it was chosen (rule, counts, date, the
                                           data's MD5s) and the entry it came from (its path, name, seed, fingerprint)
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch

from cxrlab.console import logger
from cxrlab.data.site import SiteImages
from cxrlab.data.task import data_label, fold_view, task_data
from cxrlab.errors import ConfigError
from cxrlab.evaluation import plots
from cxrlab.evaluation.scoring import positive_probability, positive_view
from cxrlab.evaluation.shift import check_shift
from cxrlab.evaluation.site_point import RULE, calibrate
from cxrlab.files import atomic_write_json, file_md5
from cxrlab.layout import SITE_FILE

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


def calibrate_site(model, site: SiteImages, name: str, data_file: Path, source: dict, out: Path) -> dict:
    """Re-choose the model's operating point on the site's labelled images (images its check flags are excluded by
    name) and write DIR/site.json; refused, naming how many more labelled images are needed, with too few."""
    probs, flagged = judged(model, site.images)
    site = site.exclude(~flagged, ["flagged by the out-of-distribution check"] * len(flagged))
    probs = probs[~flagged]
    cfg = model.cfg
    evidence = f"site {name} ({len(probs)} labelled images)"
    found = calibrate(
        site.targets, probs, cfg.target_sensitivity, cfg.rule_out_sensitivity, cfg.rule_in_specificity, cfg.bound_level, evidence
    )
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

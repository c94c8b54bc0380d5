"""Out-of-distribution methods side by side on one finished run: the share flagged of each set that is not a chest
X-ray (cxrlab.evaluation.ood_sets), with each method's threshold set to accept 99% of val, and the share of the
test split flagged. The method cxrlab uses (evaluation/ood.py) was chosen from this table. Flagged by the check alone: constant
images, which the upload path refuses before the model, are counted here only if the check flags them.

    .venv/bin/python benchmarks/ood_methods.py RUN [RUN ...]
"""

# ruff: noqa: B023  (each loop iteration's methods are called within that iteration)

from __future__ import annotations

import argparse

import numpy as np
import torch

from cxrlab.data.datasets import get_dataset
from cxrlab.data.task import task_data
from cxrlab.evaluation.inference import load_trained
from cxrlab.evaluation.ood import VAL_ACCEPT, fit_check, layer_features
from cxrlab.evaluation.ood_sets import ood_sets


def knn_scores(train: np.ndarray, query: np.ndarray, k: int = 10) -> np.ndarray:
    """Cosine distance to the k-th nearest training feature (Sun et al., ICML 2022)."""
    unit = lambda f: f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)  # noqa: E731
    similarity = unit(query) @ unit(train).T
    return 1 - np.sort(similarity, axis=1)[:, -k]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+")
    args = parser.parse_args()
    for path in args.runs:
        trained = load_trained(path, "cpu")
        cfg = trained.cfg
        data = task_data(cfg)
        layers = {s: layer_features(trained.model, data.splits[s].images, cfg, trained.device) for s in ("train", "val", "test")}
        feats = {s: layers[s][-2] for s in layers}  # the last block's channel means: the classifier's input
        probs = {s: trained.probs(data.splits[s].images)[:, 0] for s in ("val", "test")}
        sets = {
            f"{g}: {n}": imgs for g, group in ood_sets(cfg.size, get_dataset(cfg.dataset).preprocess).items() for n, imgs in group.items()
        }
        set_layers = {n: layer_features(trained.model, torch.from_numpy(im), cfg, trained.device) for n, im in sets.items()}
        set_feats = {n: f[-2] for n, f in set_layers.items()}
        set_probs = {n: trained.probs(torch.from_numpy(im))[:, 0] for n, im in sets.items()}
        last = fit_check([feats["train"]], [feats["val"]])
        every = fit_check(layers["train"], layers["val"])
        no_pixels = fit_check(layers["train"][:-1], layers["val"][:-1])
        by_layers = {"val": layers["val"], "test": layers["test"], **set_layers}
        by_feats = {"val": feats["val"], "test": feats["test"], **set_feats}
        methods = {
            "mahalanobis, last block only": lambda n: last.scores([by_feats[n]]),
            "mahalanobis, every block (cxrlab)": lambda n: every.scores(by_layers[n]),
            "mahalanobis, every block, no pixels": lambda n: no_pixels.scores(by_layers[n][:-1]),
            "k-NN cosine distance, last block (k=10)": lambda n: knn_scores(feats["train"], by_feats[n]),
            "confidence (1 - |2p - 1|)": lambda n: 1 - np.abs(2 * {"val": probs["val"], "test": probs["test"], **set_probs}[n] - 1),
        }
        print(f"\n{path}: {cfg.model}, {get_dataset(cfg.dataset).title}\n")
        print("| method | " + " | ".join(sets) + " | test split flagged |")
        print("|---|" + "---:|" * (len(sets) + 1))
        for title, score in methods.items():
            threshold = np.quantile(score("val"), VAL_ACCEPT)
            shares = [float((score(n) > threshold).mean()) for n in sets]
            print(f"| {title} | " + " | ".join(f"{s:.1%}" for s in shares) + f" | {float((score('test') > threshold).mean()):.1%} |")
        print("\nimages per set: " + ", ".join(f"{n} {len(im)}" for n, im in sets.items()))


if __name__ == "__main__":
    main()

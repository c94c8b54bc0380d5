"""PNG figures of a run. Every title carries the data label, so a phantom figure can never pass for a result."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, NullLocator
from sklearn.metrics import roc_curve

from cxrlab.data.task import is_real
from cxrlab.evaluation.metrics import logit
from cxrlab.files import atomic_write_bytes


def _subplots(*grid: int, figsize: tuple[float, float], **kwargs):
    """A figure outside pyplot: no display backend is touched (CI, servers, threads) and a notebook's own
    matplotlib backend stays as the user set it."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*grid, **kwargs)


def _save(fig, path: Path) -> Path:
    """PNG as laid out (tight_layout or a fixed grid): a "tight" bounding box would draw every figure twice."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def _title(fig, text: str, data_label: str, layout: bool = True) -> None:
    fig.suptitle(f"{text}\n{data_label}", color="black" if is_real(data_label) else "crimson", fontsize=10)
    if layout:
        fig.tight_layout(rect=(0, 0, 1, 0.93))


def _image_grid(cols: int, title_lines: tuple[int, ...]):
    """A row of ``cols`` image cells without axes per entry of ``title_lines``, each cell with room above for a title
    of that many lines at 7 pt, under room for the figure's two-line title. Laid out by arithmetic: tight_layout let
    a row's titles overlap the images above them (square images shrink their axes after the layout is computed)."""
    side, gap, head = 2.0, 0.15, 0.75  # inches: an image, the space between two, the figure's title
    bands = [0.14 * lines + 0.1 if lines else 0.0 for lines in title_lines]  # inches above each row for its titles
    width, height = cols * (side + gap) + gap, sum(bands) + len(bands) * (side + gap) + head
    fig = Figure(figsize=(width, height))
    axes = np.empty((len(bands), cols), dtype=object)
    top = height - head
    for r, band in enumerate(bands):
        top -= band + side
        for c in range(cols):
            ax = axes[r, c] = fig.add_axes(((gap + c * (side + gap)) / width, top / height, side / width, side / height))
            ax.set_axis_off()
            ax.xaxis.set_major_locator(NullLocator())  # placing a title measures the ticks, even of an axis turned off
            ax.yaxis.set_major_locator(NullLocator())
        top -= gap
    return fig, axes


def training_curves(history: list[dict], path: Path, title: str, data_label: str, best_epoch: int | None = None) -> Path:
    epochs = [r["epoch"] for r in history]
    fig, axes = _subplots(1, 3, figsize=(13, 3.8))
    panels = [("loss", "train_loss", "val_loss"), ("accuracy", "train_accuracy", "val_accuracy"), ("val ROC-AUC", None, "val_roc_auc")]
    for ax, (name, train_key, val_key) in zip(axes, panels):
        if train_key:
            ax.plot(epochs, [r[train_key] for r in history], label="train")
        ax.plot(epochs, [r[val_key] for r in history], label="val")
        if best_epoch:
            ax.axvline(best_epoch, color="grey", linestyle=":", label=f"best (epoch {best_epoch})")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _title(fig, title, data_label)
    return _save(fig, path)


def confusion_matrix(metrics: dict, classes: list[str], positive: str, path: Path, title: str, data_label: str) -> Path:
    """2x2 matrix with rows = truth, columns = prediction, negative class first."""
    negative = classes[0] if classes[1] == positive else classes[1]
    cells = np.array([[metrics["tn"], metrics["fp"]], [metrics["fn"], metrics["tp"]]])
    fig, ax = _subplots(figsize=(4.6, 4.2))
    ax.imshow(cells, cmap="Blues")
    for (i, j), value in np.ndenumerate(cells):
        share = value / max(cells[i].sum(), 1)
        ax.text(j, i, f"{value}\n({share:.0%} of row)", ha="center", va="center", color="white" if value > cells.max() / 2 else "black")
    ax.set_xticks([0, 1], [negative, positive])
    ax.set_yticks([0, 1], [negative, positive])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    _title(fig, f"{title} (threshold {metrics['threshold']:.3f})", data_label)
    return _save(fig, path)


def roc(targets: np.ndarray, probs: np.ndarray, metrics: dict, path: Path, title: str, data_label: str) -> Path:
    fpr, tpr, _ = roc_curve(targets, probs)
    fig, ax = _subplots(figsize=(4.6, 4.4))
    ax.plot(fpr, tpr, label=f"AUC {metrics['roc_auc']:.3f} [{metrics['roc_auc_ci_low']:.3f}, {metrics['roc_auc_ci_high']:.3f}]")
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
    ax.scatter([1 - metrics["specificity"]], [metrics["sensitivity"]], color="crimson", zorder=3, label="operating point")
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    _title(fig, title, data_label)
    return _save(fig, path)


def answer_colour(answer: str, truth: str) -> str:
    """Green where the answer is the true class, orange where it is refer (a reader decides), red where it is wrong."""
    return "green" if answer == truth else "darkorange" if answer == "refer" else "crimson"


def prediction_grid(
    images: np.ndarray,
    truth: list[str],
    answers: list[str],
    probs: np.ndarray,
    path: Path,
    title: str,
    data_label: str,
) -> Path:
    """Images with the answer given (a class, or refer), P(positive) and truth."""
    fig, axes = _image_grid((len(images) + 1) // 2, title_lines=(2, 2))
    for ax, image, actual, answer, p in zip(axes.flat, images, truth, answers, probs):
        ax.imshow(image, cmap="gray", vmin=0, vmax=255)
        ax.set_title(f"answer {answer}\nP={p:.3f}  true {actual}", fontsize=7, color=answer_colour(answer, actual))
    _title(fig, title, data_label, layout=False)
    return _save(fig, path)


def per_label_auc(metrics: dict, labels: list[str], path: Path, title: str, data_label: str) -> Path:
    values = [metrics[f"auc_{name}"] for name in labels]
    fig, ax = _subplots(figsize=(7, 4.6))
    ax.barh(labels[::-1], values[::-1], color="steelblue")
    ax.axvline(0.5, color="grey", linestyle="--", linewidth=1)
    ax.axvline(metrics["auc"], color="crimson", linewidth=1, label=f"mean AUC {metrics['auc']:.3f}")
    ax.set_xlim(0, 1)
    ax.set_xlabel("ROC-AUC")
    ax.legend(loc="lower right", fontsize=8)
    _title(fig, title, data_label)
    return _save(fig, path)


def reliability(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, title: str, data_label: str, bins: int = 10) -> Path:
    """Reliability diagram: observed positive rate against mean predicted probability per bin, one line per entry."""
    from sklearn.calibration import calibration_curve

    fig, ax = _subplots(figsize=(4.8, 4.6))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
    for name, (targets, probs) in curves.items():
        observed, predicted = calibration_curve(targets, probs, n_bins=bins, strategy="uniform")
        ax.plot(predicted, observed, marker="o", markersize=3, label=name)
    ax.set_xlabel("mean predicted probability")
    ax.set_ylabel("observed positive rate")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    _title(fig, title, data_label)
    return _save(fig, path)


def roc_overlay(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, title: str, data_label: str) -> Path:
    from sklearn.metrics import roc_auc_score

    fig, ax = _subplots(figsize=(5, 4.6))
    for name, (targets, probs) in curves.items():
        fpr, tpr, _ = roc_curve(targets, probs)
        ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(targets, probs):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    _title(fig, title, data_label)
    return _save(fig, path)


def pr_overlay(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, title: str, data_label: str) -> Path:
    from sklearn.metrics import average_precision_score, precision_recall_curve

    fig, ax = _subplots(figsize=(5, 4.6))
    for name, (targets, probs) in curves.items():
        precision, recall, _ = precision_recall_curve(targets, probs)
        ax.plot(recall, precision, label=f"{name} (AP {average_precision_score(targets, probs):.3f})")
    prevalence = float(np.mean(next(iter(curves.values()))[0]))
    ax.axhline(prevalence, color="grey", linestyle="--", linewidth=1, label=f"prevalence {prevalence:.2f}")
    ax.set_xlabel("recall (sensitivity)")
    ax.set_ylabel("precision")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    _title(fig, title, data_label)
    return _save(fig, path)


def gradcam_grid(
    images: np.ndarray,
    overlays: list[np.ndarray],
    truth: list[str],
    predicted: list[str],
    probs: np.ndarray,
    positive: str,
    path: Path,
    title: str,
    data_label: str,
) -> Path:
    """Two rows: the images (titled with truth, the answer given and P), then their Grad-CAM overlays."""
    n = len(images)
    fig, axes = _image_grid(n, title_lines=(3, 0))
    for k in range(n):
        axes[0, k].imshow(images[k], cmap="gray", vmin=0, vmax=255)
        axes[0, k].set_title(
            f"true {truth[k]}\nanswer {predicted[k]}\nP({positive})={probs[k]:.2f}", fontsize=7, color=answer_colour(predicted[k], truth[k])
        )
        axes[1, k].imshow(overlays[k])
    _title(fig, title, data_label, layout=False)
    return _save(fig, path)


def risk_coverage(
    curves: dict[str, tuple[np.ndarray, np.ndarray, float]],
    path: Path,
    title: str,
    data_label: str,
    bands: dict[str, tuple[float, float]] | None = None,
) -> Path:
    """Error among the answered images against the share answered, referring the least certain first (nearest the
    threshold); ``curves``: name -> (targets, P(positive), threshold); ``bands``: name -> (share answered, error)
    of a refer band, marked."""
    from cxrlab.evaluation.operating_point import risk_coverage as curve

    fig, ax = _subplots(figsize=(5.4, 4.6))
    for name, (targets, probs, threshold) in curves.items():
        coverage, risk = curve(targets, probs, threshold)
        (line,) = ax.plot(100 * coverage, 100 * risk, label=name)
        if bands and name in bands:
            ax.plot(100 * bands[name][0], 100 * bands[name][1], "o", color=line.get_color())
    ax.set_xlim(50, 100)
    ax.set_xlabel("images answered (%): the rest referred")
    ax.set_ylabel("error among the answered (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    _title(fig, title, data_label)
    return _save(fig, path)


def site_scores(
    evidence: tuple[np.ndarray, np.ndarray],
    site: np.ndarray,
    share: float,
    classes: tuple[str, str],
    path: Path,
    title: str,
    data_label: str,
) -> Path:
    """A site's P(positive) against the evidence's, on the logit scale (the scores crowd at 0 and 1): histograms per
    evidence class, and the cumulative distributions the shift check compares (the site's; the evidence's classes
    mixed at the site's estimated share)."""
    targets, probs = evidence
    negative, positive = classes
    scores, site = logit(probs), logit(site)
    fig, (left, right) = _subplots(1, 2, figsize=(10, 4))
    bins = np.linspace(-14, 14, 43)
    left.hist(scores[targets == 0], bins, density=True, alpha=0.5, label=f"evidence: {negative}")
    left.hist(scores[targets == 1], bins, density=True, alpha=0.5, label=f"evidence: {positive}")
    left.hist(site, bins, density=True, histtype="step", linewidth=2, color="black", label=f"site ({len(site)} images)")
    left.set(xlabel=f"logit P({positive})", ylabel="density")
    left.legend(fontsize=8)
    at = np.linspace(-14, 14, 561)
    cdf = lambda values: np.searchsorted(np.sort(values), at, side="right") / len(values)  # noqa: E731
    mixed = share * cdf(scores[targets == 1]) + (1 - share) * cdf(scores[targets == 0])
    right.plot(at, cdf(site), color="black", linewidth=2, label="site")
    right.plot(at, mixed, "--", label=f"evidence mixed at {share:.0%} {positive}")
    right.plot(at, cdf(scores), ":", label="evidence as it is")
    right.set(xlabel=f"logit P({positive})", ylabel="share of images at or below")
    right.legend(fontsize=8)
    _title(fig, title, data_label)
    return _save(fig, path)

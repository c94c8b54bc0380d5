"""A new site: the shift check, the operating point re-chosen on the site's labels with its guarantee, the site folder
that then answers, and bad site data."""

import csv
import json

import numpy as np
import pytest
from PIL import Image
from scipy.stats import norm

import cxrlab
from cxrlab.cli import main
from cxrlab.config import load_config
from cxrlab.data.task import task_data
from cxrlab.errors import ConfigError
from cxrlab.evaluation.shift import check_shift
from cxrlab.evaluation.site_point import calibrate, needed


def scores(rng, n: int, share: float, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """P(positive) of a toy model: logits N(+3, 1.5) for positives and N(-3 + shift, 1.5) for negatives."""
    targets = (rng.permutation(n) < round(n * share)).astype(int)  # exactly that share
    logits = np.where(targets == 1, rng.normal(3, 1.5, n), rng.normal(-3 + shift, 1.5, n))
    return targets, 1 / (1 + np.exp(-logits))


def test_the_order_statistic_rule_needs_the_published_counts_and_keeps_its_guarantee():
    assert [needed(0.95, 0.95), needed(0.98, 0.95)] == [59, 149]
    rng, kept = np.random.default_rng(0), []
    for _ in range(400):  # calibrate on 120 labelled images, then the true sensitivity at the chosen threshold
        targets, probs = scores(rng, 120, 0.6)
        threshold = calibrate(targets, probs, 0.95, None, None, 0.95, "toy").point.threshold
        true_logit = np.log(threshold / (1 - threshold))
        kept.append(norm.sf(true_logit, 3, 1.5) >= 0.95)
    assert np.mean(kept) >= 0.93  # the promise is 95%: 400 draws put the share within about 0.02 of it
    few = (np.arange(70) < 40).astype(int)  # 40 positives
    with pytest.raises(ConfigError, match=r"needs at least 59 positive images.*more labelled images"):
        calibrate(few, np.linspace(0, 1, 70), 0.95, None, None, 0.95, "toy")
    found = calibrate(*scores(rng, 200, 0.6), 0.95, 0.98, 0.98, 0.95, "toy")
    assert not found.point.has_band and "specificity 0.98" in found.point.band_error and "more labelled images" in found.point.band_error


def test_the_shift_check_tells_a_change_of_prevalence_from_a_change_of_the_images():
    rng = np.random.default_rng(1)
    evidence = scores(rng, 1500, 0.7)
    verdicts = {"prevalence": [], "images": []}
    for _ in range(12):
        verdicts["prevalence"].append(check_shift(*evidence, scores(rng, 300, 0.35)[1], bootstrap=200, seed=2).verdict)
        verdicts["images"].append(check_shift(*evidence, scores(rng, 300, 0.6, shift=1.5)[1], bootstrap=200, seed=2).verdict)
    assert verdicts["prevalence"].count("beyond-prevalence") <= 2 and verdicts["prevalence"].count("prevalence") >= 10
    assert verdicts["images"].count("beyond-prevalence") >= 10
    small = check_shift(*evidence, scores(rng, 40, 0.7)[1], bootstrap=200)
    assert small.verdict == "too-few" and "too few to rule one out" in small.words and "no shift" not in small.words


def site_files(tmp_path, run, rows: int, labels=None):
    """The run's phantom test images as PNG files and a labels CSV (``labels``: override the written labels)."""
    cfg = load_config(run.path / "config.yaml")
    test = task_data(cfg, splits=("test",)).splits["test"]
    images, targets = test.images.numpy()[:rows], test.targets.numpy()[:rows]
    folder = tmp_path / "site"
    folder.mkdir(exist_ok=True)
    with open(tmp_path / "labels.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "label"])
        for i, (image, target) in enumerate(zip(images, targets)):
            Image.fromarray(image).save(folder / f"{i:03d}.png")
            writer.writerow([f"site/{i:03d}.png", cfg.classes[target] if labels is None else labels(i, target)])
    return folder, tmp_path / "labels.csv", cfg


def test_a_site_is_checked_calibrated_and_then_answers_by_its_own_point(learned_run, tmp_path, capsys):
    folder, labels, _ = site_files(tmp_path, learned_run, 150)
    capsys.readouterr()
    assert main(["site", "check", str(learned_run.path), str(folder), "--out", str(tmp_path / "check")]) == 0
    said = capsys.readouterr().out
    found = json.loads((tmp_path / "check" / "site_check.json").read_text())
    assert found["site_images"] == 150 and found["verdict"] in ("too-few", "prevalence", "beyond-prevalence", "none-shown")
    assert "verdict: " in said and (tmp_path / "check" / "site_scores.png").stat().st_size > 10_000
    assert "no shift" not in said

    inside = learned_run.path / "site"
    assert main(["site", "calibrate", str(learned_run.path), str(labels), "--site", "A", "--out", str(inside)]) == 2
    assert "outside the entry's own folder" in capsys.readouterr().err and not inside.exists()
    out = tmp_path / "site-a"
    assert main(["site", "calibrate", str(learned_run.path), str(labels), "--site", "A", "--out", str(out)]) == 0
    record = json.loads((out / "site.json").read_text())
    assert record["site"] == "A" and record["point"]["rule"] == "site order statistic" and record["source"]["kind"] == "run"
    assert record["data"]["positives"] >= 59 and record["on_these_images"]["sensitivity"] >= 0.95
    capsys.readouterr()
    assert main(["predict", str(out), str(folder / "000.png"), "--out", str(tmp_path / "a.jsonl")]) == 0
    answer = json.loads((tmp_path / "a.jsonl").read_text().splitlines()[0])
    assert answer["threshold"] == record["point"]["threshold"] and "operating point chosen at site A" in answer["answered_by"]

    from fastapi.testclient import TestClient

    from cxrlab.serve.app import create_app

    client = TestClient(create_app(out))
    card = client.get("/model").json()
    assert card["site"]["site"] == "A" and card["operating_point"]["rule"] == "site order statistic"
    assert "operating point chosen at site A" in client.get("/").text


def test_bad_site_data_is_refused_or_excluded_by_name(learned_run, tmp_path, capsys):
    run = str(learned_run.path)
    _, labels, _ = site_files(tmp_path, learned_run, 20, labels=lambda i, t: "maybe" if i == 3 else str(t))
    assert main(["site", "calibrate", run, str(labels), "--site", "B", "--out", str(tmp_path / "b")]) == 2
    assert "site/003.png ('maybe')" in capsys.readouterr().err
    _, labels, cfg = site_files(tmp_path, learned_run, 20, labels=lambda i, t: cfg_name(learned_run, 1))
    assert main(["site", "calibrate", run, str(labels), "--site", "B", "--out", str(tmp_path / "b")]) == 2
    assert "needs both classes" in capsys.readouterr().err
    _, labels, _ = site_files(tmp_path, learned_run, 40)
    (tmp_path / "site" / "005.png").write_bytes(b"not an image")
    with open(labels, "a") as fh:
        fh.write("site/001.png,1\n")  # the same image twice
    assert main(["site", "calibrate", run, str(labels), "--site", "B", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "too few positives" in err and "more labelled images" in err and not (tmp_path / "b").exists()
    from cxrlab.data.site import labelled

    model = cxrlab.load_run(run).trained()
    found = labelled(str(labels), cfg.size, cfg.classes, cfg.positive, lambda f: model.load(f, 10**6))
    why = dict(found.excluded)
    assert "site/005.png" in why and "a repeated image" in why["site/001.png"]
    np.savez(tmp_path / "wrong.npz", images=np.zeros((4, 32, 32), np.uint8))
    assert main(["site", "check", run, str(tmp_path / "wrong.npz")]) == 2
    assert "(N, 28, 28)" in capsys.readouterr().err


def cfg_name(run, index: int) -> str:
    return load_config(run.path / "config.yaml").classes[index]


def test_a_site_adapts_the_model_only_when_asked_and_its_folder_answers_with_the_adapted_weights(learned_run, tmp_path):
    from cxrlab.errors import RunDirError

    cfg = load_config(learned_run.path / "config.yaml")
    data = task_data(cfg, splits=("val", "test"))
    images = np.concatenate([data.splits[s].images.numpy() for s in ("val", "test")])
    labels = np.concatenate([data.splits[s].targets.numpy() for s in ("val", "test")])
    np.savez(tmp_path / "labelled.npz", images=images, labels=labels)
    plain = cxrlab.load_run(learned_run.path).trained().probs(torch_batch(images[:40]))[:, 0]
    tuned = cxrlab.site_calibrate(learned_run.path, tmp_path / "labelled.npz", tmp_path / "tuned", "C", adapt="fine-tune")
    done = tuned.record["adaptation"]
    assert done["kind"] == "fine-tune" and done["divided"]["point chosen on"]["images"] == tuned.record["data"]["images"]
    used = len(images) - len(tuned.record["data"]["excluded"])
    assert done["divided"]["fine-tuned on"]["images"] + tuned.record["data"]["images"] == used
    again = cxrlab.load_site(tmp_path / "tuned").model.probs(torch_batch(images[:40]))[:, 0]
    assert np.allclose(again, tuned.model.probs(torch_batch(images[:40]))[:, 0]) and not np.allclose(again, plain, atol=1e-3)
    assert "after adapting the model to the site (fine-tune)" in tuned.predict(images[:1])[0].answered_by
    (tmp_path / "tuned" / "adapted" / "run.safetensors").write_bytes(b"changed")
    with pytest.raises(RunDirError, match="not the adapted weights"):
        cxrlab.load_site(tmp_path / "tuned")
    normed = cxrlab.site_calibrate(learned_run.path, tmp_path / "labelled.npz", tmp_path / "bn", "C", adapt="batchnorm")
    used = len(images) - len(normed.record["data"]["excluded"])
    assert normed.record["adaptation"]["divided"] is None and normed.record["data"]["images"] == used
    assert not np.allclose(normed.model.probs(torch_batch(images[:40]))[:, 0], plain, atol=1e-3)
    assert cxrlab.load_run(learned_run.path).trained().probs(torch_batch(images[:40]))[:, 0] == pytest.approx(plain)  # the run unchanged


def torch_batch(images):
    import torch

    return torch.from_numpy(images)

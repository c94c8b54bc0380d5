"""The honest evaluation of `cxrlab site` (issue 31) on a scored PneumoniaMNIST study: test stands for a new site.

Entries and rules are frozen first: the study's choices.json (every entry's shipped operating point) and cxrlab's
site rules (evaluation/site_point.py: sensitivity 0.95 with 95% confidence by the order statistic; the band's
targets 0.98 / 0.98; evaluation/shift.py: the two tests, Holm, alpha 0.05). Then test is split 50/50, stratified,
``--repeats`` times with fixed seeds: the calibration half stands for the site's labelled images, the evaluation half
for its next patients. Images an entry's out-of-distribution check flags are left out of both halves, as the site
commands leave them out. Rows, on the evaluation half:

- shipped: the study's own operating point;
- re-chosen: `site calibrate` on the calibration half, and on stratified subsamples of 50, 100 and 200 of it.

The shift check: power on test batches of 50, 100, 200 and 312 images; false alarms on batches of the held-out fold
and of val, each taken out of the evidence it is compared with; the whole of test against the evidence.

    PYTHONPATH=src .venv/bin/python benchmarks/site_evaluation.py STUDY --data-root ../shared/data --out site-eval/
    (writes site-eval/scores.npz, the entries' scores, reused when present, and site-eval/site.md)
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

import cxrlab
from cxrlab.data.site import stratified_half
from cxrlab.data.task import fold_view, task_data
from cxrlab.errors import ConfigError
from cxrlab.evaluation.scoring import positive_view
from cxrlab.evaluation.shift import check_shift
from cxrlab.evaluation.site_point import calibrate
from cxrlab.report.site import judged

SIZES = (50, 100, 200, 312)
WHOLE_TEST_BOOTSTRAP = 10_000  # p-values down to 1e-4: the target is p < 0.001
LEVEL = 0.95


def entry_keys(study: Path) -> list[tuple[str, int]]:
    choices = json.loads((study / "choices.json").read_text())
    return [(e["name"], e["seed"]) for e in choices["entries"].values()]


def scores(study: Path, data_root: str | None, out: Path) -> dict:
    """Every entry's P(positive) and out-of-distribution flags on its held-out fold, val and test (cached)."""
    cache = out / "scores.npz"
    if cache.is_file():
        with np.load(cache) as npz:
            return {k: npz[k] for k in npz.files}
    found = {}
    for name, seed in entry_keys(study):
        t0 = time.time()
        model = cxrlab.load_entry(study, name, seed).trained()
        cfg = model.cfg if data_root is None else replace(model.cfg, data_root=data_root)
        data = task_data(cfg)
        parts = {"fold": fold_view(data, cfg.cv_folds, cfg.cv_fold).splits["val"], "val": data.splits["val"], "test": data.splits["test"]}
        for part, split in parts.items():
            probs, flagged = judged(model, split.images.numpy())
            targets = positive_view(split.targets.numpy(), np.zeros(len(split)), model.classes, cfg.positive)[0]
            key = f"{name}|{seed}|{part}"
            found[key + "|targets"], found[key + "|probs"], found[key + "|flagged"] = targets, probs, flagged
        found[f"{name}|{seed}|point"] = np.array([model.point.threshold, model.point.rule_out or np.nan, model.point.rule_in or np.nan])
        print(f"scored {name} seed {seed} in {time.time() - t0:.0f} s", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **found)
    return found


def outcomes(targets: np.ndarray, probs: np.ndarray, threshold: float, rule_out: float, rule_in: float) -> dict:
    """On the evaluation half: sensitivity and specificity at the single threshold; with a band, the share referred
    and the confident false positives per 100 normals (normals at or above rule-in); without one, every false positive."""
    positive = probs >= threshold
    sens, spec = positive[targets == 1].mean(), (~positive[targets == 0]).mean()
    if np.isnan(rule_out):
        return {"sensitivity": sens, "specificity": spec, "referred": 0.0, "confident_fp": 100 * (1 - spec)}
    referred = ((probs >= rule_out) & (probs < rule_in)).mean()
    return {"sensitivity": sens, "specificity": spec, "referred": referred, "confident_fp": 100 * (probs[targets == 0] >= rule_in).mean()}


def half_split(targets: np.ndarray, rng) -> tuple[np.ndarray, np.ndarray]:
    """A stratified 50/50 split: (calibration rows, evaluation rows)."""
    cal = stratified_half(targets, rng)
    return np.flatnonzero(cal), np.flatnonzero(~cal)


def subsample(targets: np.ndarray, rows: np.ndarray, size: int, rng) -> np.ndarray:
    if size >= len(rows):
        return rows
    positives = rows[targets[rows] == 1]
    take_pos = round(size * len(positives) / len(rows))
    negatives = rows[targets[rows] == 0]
    return np.concatenate([rng.choice(positives, take_pos, replace=False), rng.choice(negatives, size - take_pos, replace=False)])


def calibration_repeats(found: dict, keys: list[tuple[str, int]], repeats: int) -> dict:
    """{(name, seed, row): list of per-repeat outcomes (None: refused)}."""
    results = {}
    for name, seed in keys:
        base = f"{name}|{seed}|test"
        keep = ~found[base + "|flagged"]
        targets, probs = found[base + "|targets"][keep], found[base + "|probs"][keep]
        threshold, rule_out, rule_in = found[f"{name}|{seed}|point"]
        for r in range(repeats):
            rng = np.random.default_rng(r)
            cal, ev = half_split(targets, rng)
            results.setdefault((name, seed, "shipped"), []).append(outcomes(targets[ev], probs[ev], threshold, rule_out, rule_in))
            for size in (*SIZES[:-1], len(cal)):
                rows = subsample(targets, cal, size, rng)
                label = f"re-chosen on {'the half' if size == len(cal) else size}"
                try:
                    point = calibrate(targets[rows], probs[rows], 0.95, 0.98, 0.98, LEVEL, "calibration half").point
                except ConfigError:
                    results.setdefault((name, seed, label), []).append(None)
                    continue
                got = outcomes(targets[ev], probs[ev], point.threshold, point.rule_out or np.nan, point.rule_in or np.nan)
                results.setdefault((name, seed, label), []).append(got)
        print(f"repeats done: {name} seed {seed}", flush=True)
    return results


def adaptation_repeats(study: Path, found: dict, name: str, seeds: list[int], repeats: int, out: Path) -> dict:
    """`site calibrate --adapt batchnorm | fine-tune` on the calibration half of the first ``repeats`` splits (the
    same splits as above), each seed of the headline entry; outcomes on the evaluation half."""
    import shutil

    test = task_data(cxrlab.load_entry(study, name, seeds[0]).trained().cfg, splits=("test",)).splits["test"]
    images, labels = test.images.numpy(), test.targets.numpy()  # class indices: the npz's labels
    results = {}
    for seed in seeds:
        base = f"{name}|{seed}|test"
        accepted = np.flatnonzero(~found[base + "|flagged"])
        targets = found[base + "|targets"][accepted]
        for r in range(repeats):
            cal, ev = half_split(targets, np.random.default_rng(r))
            np.savez(out / "calibration.npz", images=images[accepted[cal]], labels=labels[accepted[cal]])
            for how in ("batchnorm", "fine-tune"):
                folder = out / "site-entry"
                shutil.rmtree(folder, ignore_errors=True)
                entry = cxrlab.site_calibrate(study, out / "calibration.npz", folder, f"split {r}", name, seed, adapt=how)
                probs = judged(entry.model, images[accepted[ev]])[0]
                point = entry.model.point
                got = outcomes(targets[ev], probs, point.threshold, point.rule_out or np.nan, point.rule_in or np.nan)
                results.setdefault((name, seed, f"{how}, then re-chosen"), []).append(got)
            print(f"adapted: seed {seed} split {r}", flush=True)
    return results


def shift_power(found: dict, name: str, seeds: list[int], draws: int, bootstrap: int) -> dict:
    """Share of draws flagged ('beyond-prevalence', and either test) per batch source and size, and whole test."""
    table = {}
    for seed in seeds:
        key = f"{name}|{seed}"
        ok = {part: ~found[f"{key}|{part}|flagged"] for part in ("fold", "val", "test")}
        sets = {part: (found[f"{key}|{part}|targets"][ok[part]], found[f"{key}|{part}|probs"][ok[part]]) for part in ok}
        evidence = (np.concatenate([sets["fold"][0], sets["val"][0]]), np.concatenate([sets["fold"][1], sets["val"][1]]))
        whole = check_shift(*evidence, sets["test"][1], bootstrap=WHOLE_TEST_BOOTSTRAP, seed=seed)
        table.setdefault(("whole test", 0), []).append((whole.p_beyond_prevalence_holm, whole.p_any_holm, len(sets["test"][1])))
        offsets = {"fold": 0, "val": len(sets["fold"][0])}
        for source in ("test", "fold", "val"):
            for size in SIZES:
                rng = np.random.default_rng(1000 * seed + size)
                for _ in range(draws):
                    rows = rng.choice(len(sets[source][1]), min(size, len(sets[source][1])), replace=False)
                    if source == "test":
                        ev = evidence
                    else:  # the batch leaves the evidence it is compared with
                        mask = np.ones(len(evidence[0]), dtype=bool)
                        mask[offsets[source] + rows] = False
                        ev = (evidence[0][mask], evidence[1][mask])
                    got = check_shift(*ev, sets[source][1][rows], bootstrap=bootstrap, seed=int(rng.integers(1 << 31)))
                    flagged = (got.verdict == "beyond-prevalence", got.verdict in ("beyond-prevalence", "prevalence"))
                    table.setdefault((source, size), []).append(flagged)
        print(f"shift draws done: seed {seed}", flush=True)
    return table


def write(out: Path, results: dict, shift: dict, keys: list, headline: str, args, started: str) -> None:
    repeats, draws, bootstrap = args.repeats, args.draws, args.bootstrap
    names = list(dict.fromkeys(name for name, _ in keys))
    rows = list(dict.fromkeys(row for _, _, row in results))
    lines = [
        "# A new site, simulated: test split into a calibration half and an evaluation half",
        "",
        f"Generated by `benchmarks/site_evaluation.py` ({started}); {repeats} stratified 50/50 splits of test per entry and seed; "
        "images each entry's out-of-distribution check flags are left out of both halves. Per entry: over its 5 seeds × "
        f"{repeats} splits. `sens ≥ 0.95`: the share of splits whose evaluation-half sensitivity reaches 0.95 (worst seed in "
        "brackets); specificity: mean [5th, 95th percentile]; `confident FP / 100 normals`: normals answered positive outside "
        "the refer band (every false positive where there is no band); `refused`: splits whose calibration set held too "
        "few positives for the guarantee (59 needed).",
        "",
        "| entry | operating point | sens ≥ 0.95 | specificity | referred | confident FP / 100 normals | band | refused |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in names:
        for row in rows:
            per_seed = [results[(n, s, row)] for n, s in keys if n == name and (n, s, row) in results]
            if not per_seed:  # the adapted rows: the headline entry only
                continue
            flat = [o for seed in per_seed for o in seed if o is not None]
            refused = sum(o is None for seed in per_seed for o in seed) / sum(len(seed) for seed in per_seed)
            if not flat:
                lines.append(f"| {name} | {row} | — | — | — | — | — | {refused:.0%} |")
                continue
            worst = min(np.mean([o["sensitivity"] >= 0.95 for o in seed if o is not None]) for seed in per_seed if any(seed))
            spec = np.array([o["specificity"] for o in flat])
            banded = np.mean([o["referred"] > 0 for o in flat])
            lines.append(
                f"| {name} | {row} | {np.mean([o['sensitivity'] >= 0.95 for o in flat]):.1%} [{worst:.1%}] | {spec.mean():.3f} "
                f"[{np.percentile(spec, 5):.3f}, {np.percentile(spec, 95):.3f}] | {np.mean([o['referred'] for o in flat]):.1%} | "
                f"{np.mean([o['confident_fp'] for o in flat]):.1f} | {banded:.0%} of splits | {refused:.0%} |"
            )
    lines += [
        "",
        f"## The shift check: {headline}, every seed",
        "",
        f"{draws} draws per seed, source and size; bootstrap {bootstrap}. `beyond prevalence`: the share of draws with the verdict "
        "'changed beyond a change of prevalence' (Holm-corrected p < 0.05); `any`: either verdict of change. Fold and val batches "
        "are taken out of the evidence they are compared with.",
        "",
        "| batch from | images | beyond prevalence | any change |",
        "|---|---|---|---|",
    ]
    for (source, size), got in shift.items():
        if source == "whole test":
            ps = np.array(got)
            beyond, either = (", ".join(f"{p:.2g}" for p in ps[:, i]) for i in (0, 1))
            images = "–".join(str(int(n)) for n in (ps[:, 2].min(), ps[:, 2].max()))
            lines.append(f"| whole test against the evidence, each seed | {images} | Holm p {beyond} | Holm p {either} |")
        else:
            arr = np.array(got, dtype=float)
            lines.append(f"| {source} | {size} | {arr[:, 0].mean():.1%} | {arr[:, 1].mean():.1%} |")
    out.mkdir(parents=True, exist_ok=True)
    (out / "site.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def cached(path: Path, compute):
    """A phase's results, computed once and kept in ``path`` (pickle): a later failure loses none of them."""
    import pickle

    if path.is_file():
        return pickle.loads(path.read_bytes())
    found = compute()
    path.write_bytes(pickle.dumps(found))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study")
    parser.add_argument("--data-root", default=None, help="the data file's folder, if not where the study trained")
    parser.add_argument("--out", default="site-eval")
    parser.add_argument("--repeats", type=int, default=1000)
    parser.add_argument("--draws", type=int, default=100, help="shift-check batches per seed, source and size")
    parser.add_argument("--bootstrap", type=int, default=500)
    parser.add_argument("--adapt-repeats", type=int, default=6, help="splits per seed for the adapted rows (headline entry)")
    args = parser.parse_args()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    study, out = Path(args.study), Path(args.out)
    found = scores(study, args.data_root, out)
    keys = entry_keys(study)
    results = cached(out / f"calibration-{args.repeats}.pkl", lambda: calibration_repeats(found, keys, args.repeats))
    headline = json.loads((study / "choices.json").read_text())["headline"]["entry"]
    seeds = sorted({s for _, s in keys})
    if args.adapt_repeats:
        adapt = lambda: adaptation_repeats(study, found, headline, seeds, args.adapt_repeats, out)  # noqa: E731
        results.update(cached(out / f"adapted-{args.adapt_repeats}.pkl", adapt))
    power = lambda: shift_power(found, headline, seeds, args.draws, args.bootstrap)  # noqa: E731
    shift = cached(out / f"shift-{args.draws}-{args.bootstrap}.pkl", power)
    write(out, results, shift, keys, headline, args, started)


if __name__ == "__main__":
    main()

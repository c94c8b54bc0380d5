"""The commands: each parses what its flags say, calls the API and prints. No rule of their own."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cxrlab import api
from cxrlab.cli.parser import STUDY_DEST, build_parser, config_from_args, max_pixels_of
from cxrlab.config import POINT_OPTIONS, STUDY_KEYS, Config, config_fields, load_yaml
from cxrlab.errors import CxrlabError


def cmd_data(args) -> int:
    threshold = args.duplicate_threshold if args.duplicates or args.duplicates_csv else None
    print(api.describe_data(config_from_args(args), threshold, args.duplicates_csv))
    return 0


def cmd_phantom(args) -> int:
    sizes = {s: getattr(args, s) for s in ("train", "val", "test") if getattr(args, s) is not None}
    defaults = Config()
    dataset, size = getattr(args, "dataset", defaults.dataset), getattr(args, "size", defaults.size)
    path = api.phantom(args.out, size, dataset, args.official_counts, args.seed, sizes or None)
    print(f"wrote PHANTOM data (synthetic; for tests and demos, never a result): {path}")
    print(
        f"next: cxrlab data --data-root {args.out}"
        + (f" --size {size}" if size != defaults.size else "")
        + (f" --dataset {dataset}" if dataset != defaults.dataset else "")
    )
    return 0


def cmd_train(args) -> int:
    if args.resume:
        given = [k for k in vars(args) if k in {f.name for f in config_fields()}] + (["config"] if args.config else [])
        if given:
            raise CxrlabError(
                f"--resume takes the run's own config; do not combine it with {', '.join('--' + g.replace('_', '-') for g in given)}"
            )
        api.resume(args.resume, progress=args.progress)
    else:
        api.train(config_from_args(args), progress=args.progress)
    return 0


def cmd_evaluate(args) -> int:
    api.evaluate(args.run, args.split, args.device)
    return 0


def answerer(args):
    """What predict and explain answer with: a site folder, a study's entry (PyTorch, the route its study was scored
    by) or a run."""
    target = api.load_answerer(args.run, args.entry, args.seed, args.backend, getattr(args, "device", None))
    if not isinstance(target, api.Run):
        print(f"{target!r}", file=sys.stderr)
    return target


def cmd_robustness(args) -> int:
    rows = api.robustness(args.run, args.entry, args.seed, args.out)
    clean = rows[0]
    print(f"clean val: ROC-AUC {clean['roc_auc']:.3f}, sensitivity {clean['sensitivity']:.3f}, specificity {clean['specificity']:.3f}")
    print("corruption        " + "  ".join(f"sev {s}" for s in range(1, 6)) + "   (ROC-AUC)")
    for name in dict.fromkeys(r["corruption"] for r in rows[1:]):
        print(f"{name:<18}" + "  ".join(f"{r['roc_auc']:.3f}" for r in rows if r["corruption"] == name))
    return 0


def cmd_site(args) -> int:
    limit = max_pixels_of(args)
    if args.site_command == "check":
        found = api.site_check(args.run, args.images, args.entry, args.seed, args.out, args.split, limit)
        flagged = found["flagged_out_of_distribution"]
        print(f"{found['entry']}\nagainst {found['evidence_images']} images of its evidence: {found['evidence']}")
        print(f"site: {found['site_images']} images; {flagged['count']} ({flagged['share']:.1%}) flagged by the check, left out")
        for name in found["unreadable"]:
            print(f"unreadable: {name['name']}: {name['why']}", file=sys.stderr)
        print(
            f"share of {found['positive']} by EM: {found['site_prevalence']:.1%} (evidence {found['evidence_prevalence']:.1%})\n"
            f"anything changed: KS {found['ks_any']:.3f}, p {found['p_any']:.3g} (Holm {found['p_any_holm']:.3g})\n"
            f"changed beyond prevalence: KS {found['ks_beyond_prevalence']:.3f}, p {found['p_beyond_prevalence']:.3g} "
            f"(Holm {found['p_beyond_prevalence_holm']:.3g})\nverdict: {found['words']}"
        )
        if args.out:
            print(f"written: {args.out}/site_check.json, {args.out}/site_scores.png")
        return 0
    entry = api.site_calibrate(args.run, args.labelled, args.out, args.site, args.entry, args.seed, args.split, limit, args.adapt)
    for item in entry.record["data"]["excluded"]:
        print(f"excluded: {item['name']}: {item['why']}", file=sys.stderr)
    print(f"{entry!r}\nwritten: {args.out}/site.json; cxrlab predict | serve {args.out} answer by it")
    return 0


def cmd_predict(args) -> int:
    if args.out:
        api.answers_path(args.out)  # a wrong suffix is refused before any work
    target = answerer(args)
    trained = target.trained()  # a run: by default the exported ONNX model when it has one (3-5x faster on CPU)
    notes(trained, args)
    results = target.predict(args.images, max_pixels_of(args), decision=args.decision)
    for result in results:
        if result.error:
            print(f"error: {result.error}", file=sys.stderr)
        elif result.in_distribution is False:
            print(f"{result.path}\trefer\t{result.reason} (score {result.ood_score:.2f} > threshold {result.ood_threshold:.2f})")
        elif trained.cfg.task == "multilabel":
            top = sorted(result.probabilities.items(), key=lambda kv: -kv[1])[:3]
            print(f"{result.path}\t{result.label}\t" + "  ".join(f"P({k})={v:.4f}" for k, v in top))
        else:
            why = f"\t{result.reason}" if result.referred else ""
            print(f"{result.path}\t{result.answer}\tP({trained.cfg.positive})={result.probability:.4f}{why}")
    if args.out:
        print(f"answers written: {api.write_answers(results, args.out)}", file=sys.stderr)
    return 1 if any(r.error for r in results) else 0


def notes(trained, args) -> None:
    """What a reader of predict's answers must know first: phantom, no check, the operating point, what answers."""
    if trained.is_phantom:
        print("note: this model was trained on PHANTOM data; its predictions mean nothing clinically", file=sys.stderr)
    if trained.ood is None and trained.cfg.task == "binary":
        print(
            "note: no out-of-distribution check, so images unlike the training images are classified too; fit one with: "
            f"cxrlab ood {args.run}",
            file=sys.stderr,
        )
    if trained.point is not None:
        print(f"operating point: {trained.point.describe()}; answering by {args.decision or trained.cfg.decision}", file=sys.stderr)
    print(f"answered by: {trained.answered_by}", file=sys.stderr)


def cmd_compare(args) -> int:
    values = load_yaml(args.config) if args.config else {}
    overrides = {key: getattr(args, STUDY_DEST + key) for key in STUDY_KEYS if hasattr(args, STUDY_DEST + key)}
    plan = api.study(values.pop("compare", None), args.config or "options", **overrides)
    api.compare(
        config_from_args(args, values),
        plan,
        args.workers,
        args.progress,
        args.storage,
        args.study,
        args.heartbeat,
        score_test=args.score_test,
        rescore=args.rescore,
    )
    return 0


def cmd_score(args) -> int:
    api.score(args.study, rescore=args.rescore)
    return 0


def cmd_ood(args) -> int:
    for run in args.runs:
        print(f"{run}:")
        api.fit_ood(run)
    return 0


def cmd_operating_point(args) -> int:
    options = {k: getattr(args, k) for k in POINT_OPTIONS if hasattr(args, k)}
    for run in args.runs:
        api.operating_point(run, **options)
    return 0


def cmd_status(args) -> int:
    print("\n".join(api.status(args.study).lines()))
    if api.seal(args.study) is not None:
        print(api.seal(args.study))
    return 0


def cmd_cv(args) -> int:
    api.cross_validate(
        config_from_args(args),
        args.folds,
        args.cv_out,
        args.workers,
        args.progress,
        args.storage,
        args.study,
        args.heartbeat,
        score_test=args.score_test,
        rescore=args.rescore,
    )
    return 0


def cmd_search(args) -> int:
    api.search(config_from_args(args), args.method, args.trials, args.workers, args.storage, args.study, args.search_out, args.heartbeat)
    return 0


def cmd_explain(args) -> int:

    if not args.images and not args.val_grid:
        raise CxrlabError("give image files to explain, or --val-grid")
    run = answerer(args)
    explainer = run.explainer()
    print(
        f"Grad-CAM on {run.config.model} layer {explainer.layer_name}; each image's class as {run.trained().answered_by} answers it"
        + ("  (PHANTOM-trained model)" if explainer.trained.is_phantom else "")
    )
    failed = 0
    for result in run.explain(args.images, Path(args.out), max_pixels_of(args)):
        if result.error:
            failed += 1
            print(f"error: {result.error}", file=sys.stderr)
        elif result.overlay is None:
            print(f"{result.path}\trefer\t{result.reason}")
        else:
            shows = f"\t(evidence for {result.explained}; {result.reason})" if result.referred else ""
            print(f"{result.path}\t{result.answer}\tP({explainer.trained.cfg.positive})={result.probability:.4f}\t{result.overlay}{shows}")
    if args.val_grid:
        print(f"wrote {run.explain_val(Path(args.out) / 'gradcam_val_grid.png')}")
    return 1 if failed else 0


def cmd_export(args) -> int:
    api.load_run(args.run).export(quantize=args.quantize)
    return 0


def cmd_bench(args) -> int:
    api.bench(args.run, args.batch)
    return 0


def cmd_serve(args) -> int:
    import os

    from cxrlab.serve.app import serve

    token = os.environ.get("CXRLAB_TOKEN") or None
    if args.token_file:
        try:
            token = Path(args.token_file).read_text().strip()
        except OSError as exc:
            raise CxrlabError(f"cannot read the token file {args.token_file}: {exc.strerror}") from None
        if not token:
            raise CxrlabError(f"the token file {args.token_file} is empty")
    if token and args.no_auth:
        raise CxrlabError("--no-auth and an access token (--token-file or CXRLAB_TOKEN) contradict each other; give one")
    serve(
        args.run,
        args.host,
        args.port,
        args.backend,
        args.max_upload_mb,
        max_pixels_of(args) / 1e6,
        token=token,
        unauthenticated=args.no_auth,
        max_files=args.max_files,
        max_request_mp=args.max_request_mp,
        threads=args.threads,
        entry=args.entry,
        seed=args.seed,
    )
    return 0


RUN_COMMANDS = ("evaluate", "predict", "explain", "export", "bench", "serve")  # the commands that take one finished run


COMMANDS = {
    "explain": cmd_explain,
    "export": cmd_export,
    "bench": cmd_bench,
    "serve": cmd_serve,
    "cv": cmd_cv,
    "search": cmd_search,
    "data": cmd_data,
    "phantom": cmd_phantom,
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "predict": cmd_predict,
    "compare": cmd_compare,
    "score": cmd_score,
    "status": cmd_status,
    "ood": cmd_ood,
    "operating-point": cmd_operating_point,
    "site": cmd_site,
    "robustness": cmd_robustness,
}


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM, how a scheduler stops a job (Slurm's scancel, Kubernetes), is handled as Ctrl-C: every run keeps its
    last finished epoch and a shared study's runs go back to its queue at once. The handler found is restored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with sigterm_as_interrupt():
            if (
                args.command in RUN_COMMANDS
                and not api.names_an_entry(args.run, getattr(args, "entry", None), getattr(args, "seed", None))
                and not api.is_site(args.run)
            ):
                api.load_run(args.run)  # a wrong path is named at once, before torch is imported
            return COMMANDS[args.command](args)
    except CxrlabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "\ninterrupted; every run keeps its last finished epoch: continue one with cxrlab train --resume RUN, or run "
            "the same compare / cv command again",
            file=sys.stderr,
        )
        return 130

"""The command line's parser: one subcommand per task, the options of Config as flags (built from its schema), the
input limits' flags (built from cxrlab.limits), examples in every --help."""

from __future__ import annotations

import argparse
import textwrap
from dataclasses import fields

from cxrlab import __version__, api
from cxrlab.api.run import BACKENDS
from cxrlab.cli.examples import EXAMPLES
from cxrlab.config import POINT_OPTIONS, Config, Study, config_fields, from_dict, load_yaml, option_types
from cxrlab.errors import CxrlabError
from cxrlab.limits import LIMITS

STUDY_DEST = "study_"  # a study's flags land apart from the run options of the same name (--out)


def _formatter(prog):
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=34)


def _subparser(subparsers, name: str, help: str) -> argparse.ArgumentParser:
    return subparsers.add_parser(
        name, help=help, description=help, formatter_class=_formatter, epilog="examples:" + textwrap.dedent(EXAMPLES[name])
    )


def add_config_options(
    parser: argparse.ArgumentParser,
    only: tuple[str, ...] | None = None,
    skip: tuple[str, ...] = (),
    schema: type = Config,
    prefix: str = "",
) -> None:
    """One flag per option of ``schema`` (``--data-root`` for ``data_root``; a study's under ``dest`` ``prefix`` +
    name); unset flags stay out of the namespace, so a YAML file given with --config keeps its values unless a flag
    overrides them."""
    defaults, types = schema(), option_types(schema)
    for f in fields(schema):
        if (only and f.name not in only) or f.name in skip:
            continue
        default, kind, meta = getattr(defaults, f.name), types[f.name], f.metadata
        shown = " ".join(map(str, default)) if isinstance(default, list) else default or "none" if isinstance(default, dict) else default
        stated = default is None or "(default:" in meta["help"]  # None, or a default the help words itself
        kwargs = {
            "dest": prefix + f.name,
            "default": argparse.SUPPRESS,
            "help": (meta["help"] + ("" if stated else f" (default: {shown})")).replace("%", "%%"),
        }
        if kind.item is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif kind.item is not None:
            kwargs["type"] = kind.item
        if kind.is_list or "nargs" in meta:
            kwargs.update(nargs=meta.get("nargs", len(default)), metavar=f.name.split("_")[-1].upper())
        kwargs.update({k: meta[k] for k in ("choices", "metavar", "action") if k in meta})
        if kwargs.get("choices"):
            kwargs.pop("metavar", None)
        parser.add_argument(meta.get("flag", "--" + f.name.replace("_", "-")), **kwargs)


def config_from_args(args: argparse.Namespace, values: dict | None = None) -> Config:
    names = {f.name for f in config_fields()}
    config_file = getattr(args, "config", None)
    if values is None:
        values = load_yaml(config_file) if config_file else {}
    values.update({k: v for k, v in vars(args).items() if k in names})
    return from_dict(values, source=config_file or "options")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cxrlab",
        description="Chest X-ray classification on MedMNIST: ChestMNIST Cardiomegaly vs Pneumothorax (default) or PneumoniaMNIST "
        "normal vs pneumonia, with three adapted CNNs and MedMNIST v2's reference ResNet-18.",
        formatter_class=_formatter,
        epilog="examples:\n  make demo                      # the whole experiment on phantom data\n"
        "  cxrlab phantom --out data/phantom && cxrlab train --data-root data/phantom --epochs 5\n"
        "Run 'cxrlab COMMAND --help' for the options of each command.",
    )
    parser.add_argument("--version", action="version", version=f"cxrlab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _subparser(sub, "data", "Show the data file, its provenance and the binary task's counts per split and class.")
    add_config_options(p, only=("dataset", "task", "data_root", "size", "classes", "download"))
    p.add_argument("--duplicates", action="store_true", help="also count near-duplicate images within and across splits")
    p.add_argument(
        "--duplicate-threshold",
        type=float,
        default=0.99,
        metavar="R",
        help="pixel correlation (after centring each image) above which two images count as near-duplicates (default: 0.99)",
    )
    p.add_argument("--duplicates-csv", metavar="FILE", help="write every near-duplicate pair (split, row, split, row, correlation) to FILE")

    p = _subparser(sub, "phantom", "Write a phantom data file (synthetic, official npz layout) for tests and demos.")
    p.add_argument("--out", required=True, help="folder to write DATASET[_SIZE].npz into")
    add_config_options(p, only=("dataset",))
    add_config_options(p, only=("size",))
    p.add_argument("--official-counts", action="store_true", help="the data set's official split sizes and binary-task counts")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    for split, n in (("train", 2000), ("val", 400), ("test", 600)):
        p.add_argument(
            f"--{split}", type=int, default=None, metavar="N", help=f"rows in {split} (default: {n}; ChestMNIST: half are binary-task rows)"
        )

    p = _subparser(sub, "train", "Train one model: select on val, report on test; writes a run directory.")
    p.add_argument("--config", metavar="FILE", help="YAML file with any of the options below; flags override it")
    p.add_argument(
        "--resume", metavar="RUN", help="continue an interrupted run from its last checkpoint (other options are taken from the run)"
    )
    _progress_option(p)
    add_config_options(p)

    p = _subparser(sub, "evaluate", "Evaluate a finished run on a split with its saved threshold.")
    p.add_argument("run", metavar="RUN", help="run directory")
    p.add_argument("--split", choices=("val", "test"), default="test", help="split to evaluate (default: test)")
    p.add_argument("--device", default=None, help="device (default: the run's)")

    _predict_parser(sub)

    _compare_parser(sub)
    _score_parser(sub)
    _site_parser(sub)
    p = _subparser(sub, "robustness", "An entry on val under acquisition-like corruptions (MedMNIST-C's family), severities 1-5.")
    p.add_argument("run", metavar="ENTRY", help="run directory, a study's folder (then --entry) or a site folder")
    _entry_options(p)
    p.add_argument("--out", metavar="DIR", help="also write DIR/robustness.md and DIR/robustness.csv")

    p = _subparser(sub, "ood", "Fit a finished run's out-of-distribution check (images unlike the training images get no class).")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories")

    p = _subparser(
        sub,
        "operating-point",
        "Choose a finished run's single threshold and refer band again, on its own evidence "
        "(its selection split; with a held-out fold, that fold and val), never on test.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories")
    add_config_options(p, only=POINT_OPTIONS)

    p = _subparser(sub, "status", "Where a compare or cv study stands: runs finished, running and left, epochs, time left.")
    p.add_argument("study", metavar="OUT", help="the study's folder (compare's or cv's --out)")

    p = _subparser(sub, "cv", "k-fold cross-validation over train, test sealed: mean ± sd on val (test once scored), the fold ensemble.")
    p.add_argument("--config", metavar="FILE", help="YAML file with training options; flags override it")
    p.add_argument("--folds", type=int, default=5, help="number of stratified folds (default: 5)")
    p.add_argument("--out", dest="cv_out", default="runs/cv", help="folder for the fold runs and the report (default: runs/cv)")
    _study_options(p, "fold runs", "cv-FOLDER, from --out")
    _score_test_options(p)
    add_config_options(p, skip=("out", "cv_folds", "cv_fold"))

    p = _subparser(sub, "search", "Hyperparameter search (grid or Optuna TPE with median pruning) on val; writes best.yaml.")
    p.add_argument("--config", metavar="FILE", help="YAML file with training options; flags override it")
    p.add_argument(
        "--method", choices=("grid", "optuna"), default="optuna", help="grid: all 27 points; optuna: TPE + median pruning (default)"
    )
    p.add_argument("--trials", type=int, default=None, help="trials to run (default: 27 for grid, 20 for optuna)")
    _workers_option(p, "trials")
    _shared_options(p, "cxrlab-METHOD-MODEL", "sqlite:///OUT/study.db, this machine's processes only")
    p.add_argument("--out", dest="search_out", default="runs/search", help="folder for the trial runs and results (default: runs/search)")
    add_config_options(p, skip=("out", "batch_size", "lr", "dropout"))

    p = _subparser(sub, "explain", "Grad-CAM overlays for image files, or a grid of val images, with a finished run or a study's entry.")
    p.add_argument("run", metavar="RUN", help="run directory, or a study's folder (then --entry: default its headline)")
    p.add_argument("images", nargs="*", metavar="IMAGE", help="image files (PNG, JPEG, DICOM, ...)")
    _entry_options(p)
    p.add_argument("--val-grid", action="store_true", help="also write gradcam_val_grid.png: random val images with overlays")
    p.add_argument("--out", default="explained", help="folder for the PNGs (default: explained)")
    _backend_option(p)
    _max_image_option(p)

    p = _subparser(sub, "export", "Export a finished run to ONNX (checked against PyTorch) and try INT8 quantisation.")
    p.add_argument("run", metavar="RUN", help="run directory")
    p.add_argument("--format", choices=("onnx",), default="onnx", help="export format (default: onnx)")
    p.add_argument(
        "--quantize",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="try the INT8 quantisations; ship one only if it pays (default: on)",
    )

    p = _subparser(sub, "bench", "Inference speed of a run: every backend side by side, in one process.")
    p.add_argument("run", metavar="RUN", help="run directory")
    p.add_argument("--batch", type=int, default=256, help="batch size for the throughput figures (default: 256)")

    p = _subparser(sub, "serve", "Serve a run or a study's entry over HTTP: web page, /predict, /explain, /model, /health, /docs.")
    p.add_argument("run", metavar="RUN", help="run directory, or a compare study's folder (then --entry: default its headline)")
    _entry_options(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    _backend_option(p)
    for name in ("max_upload_mb", "max_files", "max_request_mp"):
        _limit_option(p, name)
    p.add_argument(
        "--threads", type=int, default=None, metavar="N", help="threads of the model's inference session (default: one per core)"
    )
    p.add_argument(
        "--token-file",
        metavar="PATH",
        help="file holding the access token clients send as 'Authorization: Bearer TOKEN' "
        "(or set CXRLAB_TOKEN); needed to serve beyond this machine",
    )
    p.add_argument(
        "--no-auth", action="store_true", help="serve beyond this machine without a token (only behind a proxy that authenticates)"
    )
    _max_image_option(p)
    return parser


def _predict_parser(sub) -> None:
    p = _subparser(sub, "predict", "Classify image files (PNG, JPEG, DICOM, ... any size or mode) with a finished run or a study's entry.")
    p.add_argument("run", metavar="RUN", help="run directory, or a compare study's folder (then --entry: default its headline)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    _entry_options(p)
    p.add_argument("--out", metavar="FILE", help="also write every answer to FILE: .csv, or .jsonl (one JSON object per line)")
    p.add_argument("--device", default=None, help="device (default: the run's)")
    _backend_option(p)
    p.add_argument(
        "--decision",
        choices=("refer", "single"),
        default=None,
        help="refer: answer a class only outside the run's refer band; single: the single threshold for every image (default: the run's)",
    )
    _max_image_option(p)


def _compare_parser(sub) -> None:
    p = _subparser(sub, "compare", "Train the models for several seeds under one protocol; write report.md and report.html.")
    p.add_argument(
        "--config",
        metavar="FILE",
        help="YAML file with training options and a 'compare:' section (models, seeds, "
        "ensemble, tta, out), as OUT/compare.yaml holds; flags override it",
    )
    add_config_options(p, schema=Study, prefix=STUDY_DEST)
    _study_options(p, "runs", "compare-FOLDER, from --out")
    _score_test_options(p)
    add_config_options(p, skip=("model", "out", "sealed"))  # a study's runs are always sealed


def _score_parser(sub) -> None:
    p = _subparser(
        sub,
        "score",
        "Score a compare or cv study's test, once, by the choices written before it (OUT/choices.json); write the report.",
    )
    p.add_argument("study", metavar="OUT", help="the study's folder (compare's or cv's --out)")
    _rescore_option(p)


def _site_parser(sub) -> None:
    p = _subparser(sub, "site", "A new site: check its images against an entry's evidence; re-choose the operating point on its labels.")
    site = p.add_subparsers(dest="site_command", required=True, metavar="STEP")
    check = site.add_parser("check", help="does a batch of the site's unlabelled images differ from the entry's evidence?")
    check.add_argument("run", metavar="ENTRY", help="run directory, a study's folder (then --entry) or a site folder")
    check.add_argument("images", nargs="+", metavar="IMAGES", help="image files, folders of them, or an npz of images (N, S, S)")
    check.add_argument("--out", metavar="DIR", help="also write DIR/site_check.json and DIR/site_scores.png")
    calibrate = site.add_parser("calibrate", help="re-choose the operating point on the site's labelled images; write a site folder")
    calibrate.add_argument("run", metavar="ENTRY", help="run directory, or a study's folder (then --entry: default its headline)")
    calibrate.add_argument("labelled", metavar="LABELLED", help="a CSV with columns file and label, or an npz of images and labels")
    calibrate.add_argument("--site", required=True, metavar="NAME", help="the site's name, as answers will name it")
    calibrate.add_argument("--out", required=True, metavar="DIR", help="a new folder for the site entry (never the entry's own)")
    calibrate.add_argument(
        "--adapt",
        choices=("batchnorm", "fine-tune"),
        help="adapt the model first: batchnorm (statistics re-estimated on the site's images, labels unused) or fine-tune (on a "
        "stratified half of the labelled images; the point is then chosen on the other half). Default: none",
    )
    for q in (check, calibrate):
        _entry_options(q)
        q.add_argument("--split", metavar="NAME", help="an official-layout npz: take NAME_images (and NAME_labels)")
        _max_image_option(q)


def _entry_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--entry", metavar="NAME", help="a study's entry as its report names it, e.g. 'efficientnet_b0 + TTA×4' or ensemble")
    p.add_argument("--seed", type=int, metavar="K", help="the entry's seed (default: the study's first)")


def _score_test_options(p: argparse.ArgumentParser) -> None:
    help = "after training and choosing, score test once, by the choices written before it (default: sealed until `cxrlab score OUT`)"
    p.add_argument("--score-test", action="store_true", help=help)
    _rescore_option(p)


def _rescore_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--rescore",
        action="store_true",
        help="score a study whose test was scored before (it reads test a second time; the report says it was rescored)",
    )


def _limit_option(p: argparse.ArgumentParser, name: str) -> None:
    kind, default, metavar, help = LIMITS[name]
    p.add_argument("--" + name.replace("_", "-"), type=kind, default=default, metavar=metavar, help=f"{help} (default: {default:g})")


def _max_image_option(p: argparse.ArgumentParser) -> None:
    _limit_option(p, "max_image_mp")


def max_pixels_of(args) -> int:
    if not args.max_image_mp > 0:
        raise CxrlabError(f"--max-image-mp must be positive, got {args.max_image_mp:g}")
    return int(args.max_image_mp * 1e6)


def _study_options(p: argparse.ArgumentParser, what: str, name: str) -> None:
    """A study's flags: how many runs at once here, where its runs are shared, progress bars."""
    _workers_option(p, what)
    _shared_options(p, name)
    _progress_option(p)


def _shared_options(p: argparse.ArgumentParser, name: str, storage: str = "none: this machine alone, no database") -> None:
    p.add_argument(
        "--storage",
        metavar="URL",
        default=None,
        help="an Optuna database (e.g. postgresql://USER@HOST/DB; the password from ~/.pgpass or PGPASSWORD, so that it is "
        f"in no command line): the same command on any number of machines shares the study's runs (default: {storage})",
    )
    p.add_argument("--study", metavar="NAME", default=None, help=f"the shared study's name (default: {name})")
    p.add_argument(
        "--heartbeat",
        metavar="S",
        type=int,
        default=None,
        help=f"seconds between a worker's heartbeats; a run whose worker is silent for 3 is taken over (default: {api.HEARTBEAT_S})",
    )


def _backend_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="what answers: auto (the exported model when the run has one: INT8 where it shipped, else fp32 ONNX; "
        "otherwise PyTorch; the default), onnx or pytorch",
    )


def _workers_option(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help=f"{what} trained at once, each in its own process (default: one per core, "
        "one thread each, on a CPU; two per GPU up to 64 px, else one per GPU); workers x --threads must not exceed the cores",
    )


def _progress_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bars (default: when the output is a terminal)"
    )

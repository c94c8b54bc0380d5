"""Hyperparameter search over the experiment's usual space, objective on val, through an Optuna study.

- ``grid``: every point of batch 8/16/32 x lr 1e-3/5e-4/3e-4 x dropout 0.3/0.4/0.5 (27 trials), in random order.
- ``optuna``: TPE over the same space, trials stopped early by the median pruner (on the per-epoch val metric).

The study lives in Optuna's storage: a SQLite file in OUT by default, or any database URL, so worker processes
here (``--workers``) or on other machines (the same ``--storage`` and ``--study``) share one study.

    OUT/study.db                 the Optuna study (default storage)
    OUT/trials/trial<NNN>/       one run directory per trial
    OUT/search.md, .html, .csv   every trial: parameters, val score, state, run directory
    OUT/best.yaml                the best trial's config, ready for `cxrlab train --config OUT/best.yaml`
"""

from __future__ import annotations

import csv
import io
import math
import multiprocessing
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import optuna
import torch
import yaml

from cxrlab.config import HIGHER_IS_BETTER, Config, resolve, score_of
from cxrlab.console import logger, quiet
from cxrlab.core.runs import RunDir
from cxrlab.data.task import is_phantom
from cxrlab.errors import ConfigError
from cxrlab.files import atomic_write_text
from cxrlab.report.document import Document
from cxrlab.report.study import check_data_once
from cxrlab.training.loop import train
from cxrlab.training.runner import plan

log = logger(__name__)

SPACE = {"batch_size": [8, 16, 32], "lr": [1e-3, 5e-4, 3e-4], "dropout": [0.3, 0.4, 0.5]}
METHODS = ("grid", "optuna")


def default_storage(out: Path) -> str:
    return f"sqlite:///{(out / 'study.db').resolve()}"


def open_study(method: str, storage: str, name: str, base: Config, worker: int = 0) -> optuna.Study:
    seed = base.seed * 1000 + worker  # workers started together must not draw the same first trials
    if method == "grid":
        sampler, pruner = optuna.samplers.GridSampler(SPACE, seed=seed), optuna.pruners.NopPruner()
    else:
        sampler, pruner = optuna.samplers.TPESampler(seed=seed), optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
    engine = {"connect_args": {"timeout": 60}} if storage.startswith("sqlite") else None  # workers write one file in turn
    try:
        rdb = optuna.storages.RDBStorage(storage, engine_kwargs=engine)
    except Exception as exc:  # sqlalchemy raises many kinds for a bad URL or an unreachable database
        raise ConfigError(f"cannot open the Optuna storage {storage!r}: {exc}") from None
    direction = "maximize" if HIGHER_IS_BETTER[base.select_metric] else "minimize"
    return optuna.create_study(study_name=name, storage=rdb, sampler=sampler, pruner=pruner, direction=direction, load_if_exists=True)


def objective(base: Config, out: Path) -> Callable[[optuna.Trial], float]:
    def run_trial(trial: optuna.Trial) -> float:
        dropout = trial.suggest_categorical("dropout", SPACE["dropout"])
        cfg = resolve(
            replace(
                base,
                batch_size=trial.suggest_categorical("batch_size", SPACE["batch_size"]),
                lr=trial.suggest_categorical("lr", SPACE["lr"]),
                dropout=[dropout, dropout],
                out=str(out / "trials" / f"trial{trial.number:03d}"),
            )
        )
        trial.set_user_attr("run", cfg.out)

        def report(epoch: int, row: dict) -> None:
            value = score_of(row, base.select_metric)
            if not math.isnan(value):
                trial.report(value, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {epoch}")

        with quiet():  # a trial's epochs: the search prints one line per trial
            run = train(cfg, progress=False, on_epoch=report, search_trial=True)
        value = run.read_json(run.summary)["best_val_score"]
        log.info(f"trial {trial.number}: {trial.params} -> val {base.select_metric} {value:.4f}")
        return value

    return run_trial


def _worker(base: Config, method: str, storage: str, name: str, out: Path, trials: int, threads: int, worker: int) -> None:
    torch.set_num_threads(threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(method, storage, name, base, worker)
    study.optimize(objective(base, out), n_trials=trials)


def search(
    base: Config,
    method: str = "optuna",
    trials: int | None = None,
    workers: int | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    out: str | Path = "runs/search",
) -> dict:
    """Run the search (continuing the study if it exists); write the results and best.yaml. Returns the best trial."""
    if method not in METHODS:
        raise ConfigError(f"unknown search method {method!r}; choose grid or optuna")
    base = base.validate()
    check_data_once(base, [])  # located, downloaded and verified here, once, not by each worker
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    storage = storage or default_storage(out)
    name = study_name or f"cxrlab-{method}-{base.model}"
    grid_size = math.prod(len(v) for v in SPACE.values())
    trials = trials or (grid_size if method == "grid" else 20)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    open_study(method, storage, name, base)  # created (or checked) once, before the workers race to it
    how = plan(trials, base.device, base.size, workers, base.threads)  # the same rule as compare and cv
    workers = how.workers
    per_worker = math.ceil(trials / workers)
    log.info(f"{method} search over {SPACE}: {trials} trials, {workers} worker process(es), study {name!r} in {storage}")
    if workers == 1:
        _worker(base, method, storage, name, out, trials, how.threads or base.threads or torch.get_num_threads(), 0)
    else:
        context = multiprocessing.get_context("spawn")
        processes = [
            context.Process(target=_worker, args=(base, method, storage, name, out, per_worker, how.threads, i)) for i in range(workers)
        ]
        for p in processes:
            p.start()
        for p in processes:
            p.join()
        if any(p.exitcode != 0 for p in processes):
            raise ConfigError(
                f"a search worker failed (exit codes {[p.exitcode for p in processes]}); the study keeps every finished trial"
            )
    study = open_study(method, storage, name, base)
    return write_results(study, base, out)


def write_results(study: optuna.Study, base: Config, out: Path) -> dict:
    trials = sorted(study.trials, key=lambda t: t.number)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise ConfigError(f"no trial of study {study.study_name!r} completed; see the trial run directories in {out / 'trials'}")
    best = study.best_trial
    rows = []
    for t in trials:
        value = "—" if t.value is None else f"{t.value:.4f}"
        last = max(t.intermediate_values) if t.intermediate_values else 0
        rows.append(
            [
                str(t.number),
                str(t.params.get("batch_size")),
                f"{t.params.get('lr', float('nan')):g}",
                str(t.params.get("dropout")),
                value,
                t.state.name.lower(),
                str(last),
                f"`{t.user_attrs.get('run', '')}`",
            ]
        )
    header = ["trial", "batch", "lr", "dropout", f"val {base.select_metric}", "state", "epochs run", "run"]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([h.replace(" ", "_") for h in header])
    writer.writerows([[c.strip("`") for c in r] for r in rows])
    atomic_write_text(out / "search.csv", buffer.getvalue())

    best_cfg = yaml.safe_load(Path(best.user_attrs["run"], "config.yaml").read_text())
    best_cfg.pop("out")  # a new run of the best config gets its own directory
    atomic_write_text(
        out / "best.yaml",
        f"# best trial {best.number} of study {study.study_name}: val {base.select_metric} {best.value:.4f}\n"
        + yaml.safe_dump(best_cfg, sort_keys=False),
    )
    best_run = RunDir(best.user_attrs["run"])
    phantom = is_phantom(best_run.read_json(best_run.data))
    doc = Document(f"cxrlab hyperparameter search: {study.study_name}", warning="PHANTOM data: not a result" if phantom else None)
    doc.text(
        f"{len(trials)} trials ({len(complete)} complete), objective: best val {base.select_metric} of the run "
        f"({'higher' if HIGHER_IS_BETTER[base.select_metric] else 'lower'} is better); the test split is never looked at. "
        f"Best: trial {best.number}, {best.params}, val {base.select_metric} {best.value:.4f}."
    )
    doc.table(header, rows)
    doc.text(f"Train the best config: `cxrlab train --config {out / 'best.yaml'}`")
    doc.write(out, "search")
    log.info(f"best trial {best.number}: {best.params}, val {base.select_metric} {best.value:.4f}")
    log.info(f"written: {out / 'search.md'}, {out / 'search.csv'}, {out / 'best.yaml'}")
    return {"number": best.number, "params": best.params, "value": best.value, "run": best.user_attrs["run"]}

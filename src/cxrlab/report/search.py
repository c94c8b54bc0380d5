"""Hyperparameter search over the experiment's usual space, objective on val, through an Optuna study.

- ``grid``: every point of batch 8/16/32 x lr 1e-3/5e-4/3e-4 x dropout 0.3/0.4/0.5 (27 trials). The points are the
  study's list of runs (training/shared.py): each is claimed by exactly one worker, whatever the number of workers
  and machines, and a dead worker's point is resumed by another.
- ``optuna``: TPE over the same space, trials stopped early by the median pruner (on the per-epoch val metric).
  ``--trials`` caps the study as a whole: a trial beyond the cap trains nothing and stops its worker. A trial whose
  worker died is retried (Optuna's heartbeat) and resumes its own folder.

The study lives in Optuna's storage: a SQLite file in OUT by default (this machine's processes), or a database URL
(PostgreSQL across machines: the same command, ``--storage`` and ``--study`` on each, OUT on shared storage).

    OUT/study.db                 the Optuna study (default storage)
    OUT/trials/<point>/          grid: one run directory per grid point (bs16-lr0.0005-do0.4)
    OUT/trials/trial<NNN>/       optuna: one run directory per trial (a retry keeps its first trial's)
    OUT/search.md, .html, .csv   every trial: parameters, val score, state, run directory
    OUT/best.yaml                the best trial's config, ready for `cxrlab train --config OUT/best.yaml`
"""

from __future__ import annotations

import csv
import io
import itertools
import math
import multiprocessing
import random
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
from cxrlab.report.study import check_data_once, within
from cxrlab.training.loop import resume_training, train
from cxrlab.training.runner import plan, run_state, what_it_is
from cxrlab.training.shared import HEARTBEAT_S, Shared, join, open_storage, optuna_quiet, work

log = logger(__name__)

SPACE = {"batch_size": [8, 16, 32], "lr": [1e-3, 5e-4, 3e-4], "dropout": [0.3, 0.4, 0.5]}
METHODS = ("grid", "optuna")
OVER_CAP = "over_cap"  # a trial started after the study had its --trials: it trains nothing


def default_storage(out: Path) -> str:
    return f"sqlite:///{(out / 'study.db').resolve()}"


def grid_points(seed: int) -> list[dict]:
    """Every point of SPACE, in an order fixed by ``seed`` (so that ``--trials N`` below the grid takes a spread)."""
    names = list(SPACE)
    points = [dict(zip(names, values)) for values in itertools.product(*(SPACE[n] for n in names))]
    random.Random(seed).shuffle(points)
    return points


def point_key(params: dict) -> str:
    return f"bs{params['batch_size']}-lr{params['lr']:g}-do{params['dropout']:g}"


def trial_config(base: Config, params: dict, folder: Path) -> Config:
    return resolve(replace(base, batch_size=params["batch_size"], lr=params["lr"], dropout=[params["dropout"]] * 2, out=str(folder)))


def train_trial(cfg: Config, on_epoch=None) -> float:
    """Train a trial's run, resume it (a retry after its worker died), or reuse it when finished; its val score."""
    state = run_state(cfg)
    with quiet():  # a trial's epochs: the search prints one line per trial
        if state == "partial":
            run = resume_training(cfg.out, progress=False, on_epoch=on_epoch, data_root=cfg.data_root, search_trial=True)
        elif state == "new":
            run = train(cfg, progress=False, on_epoch=on_epoch, search_trial=True)
        else:
            run = RunDir(cfg.out)
    return float(run.read_json(run.summary)["best_val_score"])


def objective(base: Config, out: Path, cap: int | None = None) -> Callable[[optuna.Trial], float]:
    """Optuna's objective for TPE: the cap, the parameters, the trial's folder (its first trial's, for a retry), the run."""

    def run_trial(trial: optuna.Trial) -> float:
        frozen = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)
        first = frozen.system_attrs.get("failed_trial")  # a retry of a trial whose worker died
        if cap is not None and first is None and _rank(trial.study, trial.number) >= cap:
            trial.set_user_attr(OVER_CAP, True)
            trial.study.stop()
            raise optuna.TrialPruned(f"the study has its {cap} trials")
        dropout = trial.suggest_categorical("dropout", SPACE["dropout"])
        params = {
            "batch_size": trial.suggest_categorical("batch_size", SPACE["batch_size"]),
            "lr": trial.suggest_categorical("lr", SPACE["lr"]),
        }
        cfg = trial_config(
            base, {**params, "dropout": dropout}, out / "trials" / f"trial{first if first is not None else trial.number:03d}"
        )
        trial.set_user_attr("run_dir", cfg.out)

        def report(epoch: int, row: dict) -> None:
            value = score_of(row, base.select_metric)
            if not math.isnan(value):
                trial.report(value, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {epoch}")

        value = train_trial(cfg, report)
        log.info(f"trial {trial.number}: {trial.params} -> val {base.select_metric} {value:.4f}")
        return value

    return run_trial


def _rank(study: optuna.Study, number: int) -> int:
    """How many of the study's own trials (not retries) came before trial ``number``: trial numbers are given out
    one at a time by the database, so the first ``cap`` trials are the same for every worker."""
    return sum(1 for t in study.get_trials(deepcopy=False) if t.number < number and "failed_trial" not in t.system_attrs)


def _grid_worker(base: Config, shared: Shared, out: Path, threads: int, points: dict) -> list[str]:
    torch.set_num_threads(threads)

    def run_point(key: str, trial_id: int) -> float:
        cfg = trial_config(base, points[key], out / "trials" / key)
        storage.set_trial_user_attr(trial_id, "run_dir", cfg.out)
        for name, choices in SPACE.items():  # as TPE's trials carry them: study.best_params, trials_dataframe, the dashboard
            distribution = optuna.distributions.CategoricalDistribution(choices)
            storage.set_trial_param(trial_id, name, distribution.to_internal_repr(points[key][name]), distribution)

        def report(epoch: int, row: dict) -> None:
            value = score_of(row, base.select_metric)
            if not math.isnan(value):
                storage.set_trial_intermediate_value(trial_id, epoch, value)

        value = train_trial(cfg, report)
        log.info(f"{key}: val {base.select_metric} {value:.4f}")
        return value

    storage = open_storage(shared)
    return work(shared, run_point)


def _tpe_worker(base: Config, shared: Shared, out: Path, threads: int, cap: int, worker: int) -> None:
    torch.set_num_threads(threads)
    sampler = optuna.samplers.TPESampler(seed=base.seed * 1000 + worker)  # workers started together draw different first trials
    pruner = optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
    study = optuna.load_study(study_name=shared.name, storage=open_storage(shared), sampler=sampler, pruner=pruner)
    with optuna_quiet():  # one line per trial is ours
        study.optimize(objective(base, out, cap), n_trials=cap)


def search(
    base: Config,
    method: str = "optuna",
    trials: int | None = None,
    workers: int | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    out: str | Path = "runs/search",
    heartbeat_s: int = HEARTBEAT_S,
) -> dict:
    """Run the search (joining the study if it exists); write the results and best.yaml. Returns the best trial."""
    if method not in METHODS:
        raise ConfigError(f"unknown search method {method!r}; choose grid or optuna")
    base = base.validate()
    md5 = check_data_once(base, [])  # located, downloaded and verified here, once, not by each worker
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    shared = Shared(storage or default_storage(out), study_name or f"cxrlab-{method}-{base.model}", heartbeat_s)
    grid_size = math.prod(len(v) for v in SPACE.values())
    trials = trials or (grid_size if method == "grid" else 20)
    if method == "grid" and not 1 <= trials <= grid_size:
        raise ConfigError(f"a grid search runs 1 to {grid_size} of the grid's points, got --trials {trials}")
    points = {point_key(p): p for p in grid_points(base.seed)[:trials]} if method == "grid" else {}
    options = {k: v for k, v in what_it_is(base).items() if k not in SPACE}
    direction = "maximize" if HIGHER_IS_BETTER[base.select_metric] else "minimize"
    fingerprint = {"data_md5": md5, "method": method, "trials": trials, "options": options}
    join(
        shared, list(points), fingerprint, out, direction, {k: {"params": p} for k, p in points.items()}
    )  # created (or checked) once, before the workers race to it
    how = plan(trials, base.device, base.size, workers, base.threads)  # the same rule as compare and cv
    threads = how.threads or base.threads or torch.get_num_threads()
    log.info(
        f"{method} search over {SPACE}: {trials} trials, {how.workers} worker process(es) here, study {shared.name!r} in {shared.where}"
    )
    if method == "grid":
        target, args = _grid_worker, [(base, shared, out, threads, points)] * how.workers
    else:
        target, args = _tpe_worker, [(base, shared, out, threads, trials, i) for i in range(how.workers)]
    if how.workers == 1:
        target(*args[0])
    else:
        _in_processes(target, args)
    return write_results(optuna.load_study(study_name=shared.name, storage=open_storage(shared)), base, out)


def _in_processes(target, args: list[tuple]) -> None:
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=target, args=a) for a in args]
    for p in processes:
        p.start()
    for p in processes:
        p.join()
    if any(p.exitcode != 0 for p in processes):
        raise ConfigError(f"a search worker failed (exit codes {[p.exitcode for p in processes]}); the study keeps every finished trial")


def epochs_run(trial) -> int:
    """The epochs the trial's run trained, from its summary (a reused or resumed run reports no epoch to the trial);
    a pruned or failed run's last reported epoch."""
    run = RunDir(trial.user_attrs["run_dir"]) if "run_dir" in trial.user_attrs else None
    if run is not None and run.summary.is_file():
        return int(run.read_json(run.summary)["epochs_run"])
    return max(trial.intermediate_values) if trial.intermediate_values else 0


def write_results(study: optuna.Study, base: Config, out: Path) -> dict:
    trials = [
        t for t in sorted(study.trials, key=lambda t: t.number) if OVER_CAP not in t.user_attrs and "duplicate_of" not in t.user_attrs
    ]
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise ConfigError(f"no trial of study {study.study_name!r} completed; see the trial run directories in {out / 'trials'}")
    best = study.best_trial
    rows = []
    for t in trials:
        params = t.params or t.user_attrs.get("params", {})
        last = epochs_run(t)
        rows.append(
            [
                str(t.number),
                str(params.get("batch_size")),
                f"{params.get('lr', float('nan')):g}",
                str(params.get("dropout")),
                "—" if t.value is None else f"{t.value:.4f}",
                t.state.name.lower(),
                str(t.system_attrs.get("failed_trial", "")),
                str(last),
                f"`{within(t.user_attrs['run_dir'], out)}`" if "run_dir" in t.user_attrs else "",
            ]
        )
    header = ["trial", "batch", "lr", "dropout", f"val {base.select_metric}", "state", "retry of", "epochs run", "run"]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([h.replace(" ", "_") for h in header])
    writer.writerows([[c.strip("`") for c in r] for r in rows])
    atomic_write_text(out / "search.csv", buffer.getvalue())

    best_run = RunDir(best.user_attrs["run_dir"])
    best_cfg = yaml.safe_load(best_run.config.read_text())
    best_cfg.pop("out")  # a new run of the best config gets its own directory
    best_params = best.params
    atomic_write_text(
        out / "best.yaml",
        f"# best trial {best.number} of study {study.study_name}: val {base.select_metric} {best.value:.4f}\n"
        + yaml.safe_dump(best_cfg, sort_keys=False),
    )
    phantom = is_phantom(best_run.read_json(best_run.data))
    doc = Document(f"cxrlab hyperparameter search: {study.study_name}", warning="PHANTOM data: not a result" if phantom else None)
    doc.text(
        f"{len(trials)} trials ({len(complete)} complete), objective: best val {base.select_metric} of the run "
        f"({'higher' if HIGHER_IS_BETTER[base.select_metric] else 'lower'} is better); the test split is never looked at. "
        f"Best: trial {best.number}, {best_params}, val {base.select_metric} {best.value:.4f}."
    )
    doc.table(header, rows)
    doc.text("Train the best config: `cxrlab train --config best.yaml` (in this folder).")
    doc.write(out, "search")
    log.info(f"best trial {best.number}: {best_params}, val {base.select_metric} {best.value:.4f}")
    log.info(f"written: {out / 'search.md'}, {out / 'search.csv'}, {out / 'best.yaml'}")
    return {"number": best.number, "params": best_params, "value": best.value, "run": best.user_attrs["run_dir"]}

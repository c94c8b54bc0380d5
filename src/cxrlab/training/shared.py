"""A study's runs shared by workers on any number of machines, through Optuna's database storage (RDBStorage:
PostgreSQL or MySQL across machines; SQLite for processes of one machine).

The study's runs (compare: model x seed; cv: fold; a grid search: grid point) are enqueued once, as WAITING trials
named by their key (user attribute ``run``). A worker claims one (WAITING -> RUNNING: one UPDATE, so exactly one
worker gets it), trains it in its folder under the shared ``--out``, records a heartbeat while it trains, and marks
it COMPLETE. When a worker dies, the next worker that looks fails its stale trial (``optuna.storages.
fail_stale_trials``) and Optuna enqueues it again (``RetryHeartbeatStaleTrialCallback``); whoever claims it resumes
the run from its last saved epoch, since the run's folder is named by its key. Ctrl-C does the same at once.
A worker with nothing left to claim waits while other workers' runs train (to take over one whose worker dies),
so every command ends when the study does.

The study records what it is (``fingerprint``: the data file's MD5 and every run's training options) and a token
that its creator wrote into the study's folder: a worker with other data or options, or one that does not see the
folder (no shared storage), is refused before it trains.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cxrlab.console import logger
from cxrlab.errors import ConfigError, RunDirError
from cxrlab.files import atomic_write_json

log = logger(__name__)

STUDY_FILE = "shared-study.json"  # in the study's folder: its name, where it is stored, and the token
HEARTBEAT_S = 30  # a worker records it is alive this often; one silent for three periods is taken for dead
MAX_RETRIES = 3  # a run whose worker keeps dying (out of memory, preempted) is given up after this many retries
POLL_S = 2  # how often a worker with nothing to take looks again (one query): the delay before a command ends
JOIN_WAIT_S = 120  # how long a worker waits for the study's creator to finish enqueueing its runs


@dataclass(frozen=True)
class Shared:
    """Where a study is shared: an Optuna storage URL, the study's name, and the heartbeat period in seconds (a
    worker silent for three periods is taken for dead)."""

    url: str
    name: str
    heartbeat_s: int = HEARTBEAT_S

    def __post_init__(self) -> None:
        if self.heartbeat_s < 1:
            raise ConfigError(f"heartbeat must be at least 1 second, got {self.heartbeat_s}")

    @property
    def where(self) -> str:
        return describe(self.url)


@contextmanager
def optuna_quiet() -> Iterator[None]:
    """Optuna's own INFO lines (a study created, a trial finished) and its warnings that heartbeats are experimental
    kept off the console within the block; its verbosity and the warning filters are restored after."""
    import optuna

    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        optuna.logging.set_verbosity(level)


def describe(url: str) -> str:
    """The storage as a message may name it: dialect, host, port and database, never the user's password."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        return "an unreadable storage URL"
    if parsed.get_backend_name() == "sqlite":
        return f"SQLite file {parsed.database}"
    host = f"{parsed.host or 'localhost'}" + (f":{parsed.port}" if parsed.port else "")
    return f"{parsed.get_backend_name()} database {parsed.database!r} on {host}"


def open_storage(shared: Shared, attempts: int = 5):
    """Optuna's RDBStorage with heartbeats and retries of stale trials; one line naming host and database when it
    cannot be used (the driver's own message can hold the URL, so it is not repeated). Workers that start together on
    a new database race to create Optuna's tables: the loser (PostgreSQL says IntegrityError or, for a table created
    meanwhile, ProgrammingError) tries again, and a lasting error is named after the last try."""
    import optuna
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    engine = {"connect_args": {"timeout": 60}} if shared.url.startswith("sqlite") else {"pool_pre_ping": True}
    for attempt in range(attempts):
        try:
            with optuna_quiet():  # heartbeats and their retry are marked experimental since Optuna 2.8
                return optuna.storages.RDBStorage(
                    shared.url,
                    engine_kwargs=engine,
                    heartbeat_interval=shared.heartbeat_s,
                    grace_period=3 * shared.heartbeat_s,
                    heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES),
                )
        except (IntegrityError, ProgrammingError) as exc:
            if attempt + 1 < attempts:
                time.sleep(1.0 + attempt)
                continue
            reason = f"its tables could not be created ({_reason(exc)})"
        except Exception as exc:  # sqlalchemy and the drivers raise many kinds for a bad URL or an unreachable server
            reason = _reason(exc)
        raise ConfigError(f"cannot use the study storage, {describe(shared.url)}: {reason}") from None


def _reason(exc: Exception) -> str:
    text = str(exc)
    if "password authentication failed" in text or "Access denied" in text:
        return "authentication failed"
    if "Connection refused" in text or "could not connect" in text or "timeout" in text.lower():
        return "no server answers there"
    if "does not exist" in text:
        return "no such database (create it first, e.g. createdb)"
    if isinstance(exc, ModuleNotFoundError):
        return f"the driver is not installed (pip install 'cxrlab[distributed]'): {exc.name}"
    return type(exc).__name__


def join(shared: Shared, keys: list[str], fingerprint: dict, folder: Path, direction: str = "maximize", attrs: dict | None = None):
    """The shared study, created with one WAITING trial per key (with ``attrs[key]`` among its user attributes) when
    new, else checked against ``fingerprint`` and ``folder``. Returns the Optuna study."""
    import optuna

    storage = open_storage(shared)
    folder = Path(folder)
    try:
        with optuna_quiet():
            study = optuna.create_study(study_name=shared.name, storage=storage, direction=direction)
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=shared.name, storage=storage)
        _check_joined(study, shared, fingerprint, folder)
        requeue_unfinished(study, keys, attrs or {})
        return study
    token = secrets.token_hex(16)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / STUDY_FILE, {"study": shared.name, "storage": shared.where, "token": token})
    study.set_user_attr("fingerprint", fingerprint)
    study.set_user_attr("token", token)
    for key in keys:
        study.enqueue_trial({}, user_attrs={**(attrs or {}).get(key, {}), "run": key}, skip_if_exists=False)
    study.set_user_attr("ready", True)  # last: a worker that joins meanwhile waits for the whole list
    log.info(f"shared study {shared.name!r} created in {shared.where}: {len(keys)} runs")
    return study


def _check_joined(study, shared: Shared, fingerprint: dict, folder: Path) -> None:
    waited = 0.0
    while not study.user_attrs.get("ready"):
        if waited > JOIN_WAIT_S:
            raise ConfigError(f"study {shared.name!r} in {shared.where} was never completed by its creator; give a new study name")
        time.sleep(1.0)
        waited += 1.0
    theirs, fingerprint = study.user_attrs.get("fingerprint", {}), json.loads(json.dumps(fingerprint))  # as stored: tuples are lists
    if theirs != fingerprint:
        raise ConfigError(f"study {shared.name!r} in {shared.where} is another study: {', '.join(differences(theirs, fingerprint))}")
    marker = folder / STUDY_FILE
    try:
        token = json.loads(marker.read_text())["token"]
    except (OSError, ValueError, KeyError):
        token = None
    if token != study.user_attrs.get("token"):
        raise ConfigError(
            f"this machine does not see study {shared.name!r}'s folder: {marker} is missing or another study's. Every "
            "worker's --out must be the same folder on storage all machines reach (a shared file system)"
        )
    log.info(f"joined shared study {shared.name!r} in {shared.where}")


def differences(theirs: dict, mine: dict, prefix: str = "") -> list[str]:
    """What differs between two fingerprints, by name: 'data_md5', 'runs.densenet121-seed0.lr', ..."""
    found = []
    for key in sorted(set(theirs) | set(mine)):
        a, b = theirs.get(key), mine.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            found.append(f"{prefix}{key} is {a!r} there, {b!r} here")
    return found


def requeue_unfinished(study, keys: list[str], attrs: dict) -> None:
    """A rerun of the command on a study no worker is running: runs that failed (an error, or retries used up) are
    enqueued again; finished ones are kept."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    if any(t.state in (TrialState.WAITING, TrialState.RUNNING) for t in trials):
        return  # workers are at it: their runs are theirs
    done = {t.user_attrs.get("run") for t in trials if t.state == TrialState.COMPLETE}
    for key in keys:
        if key not in done:
            study.enqueue_trial({}, user_attrs={**attrs.get(key, {}), "run": key}, skip_if_exists=False)


def claim(study, storage, study_id: int) -> tuple[int, object] | None:
    """One WAITING trial of the study, now RUNNING and this worker's, as (trial id, trial); None when none waits.
    The state changes in one locked UPDATE, so of workers that race for a trial exactly one gets it."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    for trial in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        try:
            if storage.set_trial_state_values(trial_id, state=TrialState.RUNNING):  # False: another worker was first
                storage.record_heartbeat(trial_id)
                storage.set_trial_user_attr(trial_id, "worker", worker_name())
                return trial_id, storage.get_trial(trial_id)
        except UpdateFinishedTrialError:
            continue
    return None


class Heartbeat:
    """Records the trial's heartbeat every period from a thread, while the run trains."""

    def __init__(self, storage, trial_id: int, period_s: int):
        self.storage, self.trial_id, self.period_s = storage, trial_id, period_s
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def __enter__(self) -> Heartbeat:
        self.storage.record_heartbeat(self.trial_id)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()

    def _beat(self) -> None:
        while not self.stop.wait(self.period_s):
            self.storage.record_heartbeat(self.trial_id)


def work(shared: Shared, run_key: Callable[[str, int], float]) -> list[str]:
    """Claim and run the study's runs until none is waiting or running anywhere; ``run_key(key, trial_id)`` trains
    one and returns its value. Returns the errors of runs that failed here."""
    import optuna
    from optuna.trial import TrialState

    storage = open_storage(shared)
    study = optuna.load_study(study_name=shared.name, storage=storage)
    study_id, failed = storage.get_study_id_from_name(shared.name), []
    while True:
        with optuna_quiet():  # a dead worker's run goes back to the queue
            optuna.storages.fail_stale_trials(study)
        claimed = claim(study, storage, study_id)
        if claimed is None:
            if not study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
                return failed
            time.sleep(min(shared.heartbeat_s, POLL_S))
            continue
        trial_id, trial = claimed
        key = trial.user_attrs["run"]
        if _another_has(study, key, trial.number):
            storage.set_trial_user_attr(trial_id, "duplicate_of", key)
            storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
            continue
        try:
            with Heartbeat(storage, trial_id, shared.heartbeat_s):
                value = run_key(key, trial_id)
        except KeyboardInterrupt:
            storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
            requeue(study, storage.get_trial(trial_id))
            log.info(f"interrupted: {key} is back in study {shared.name!r}'s queue; any worker resumes it")
            raise
        except Exception as exc:  # the run's error is recorded and named at the end; the worker goes on
            storage.set_trial_user_attr(trial_id, "error", f"{type(exc).__name__}: {exc}")
            storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
            failed.append(f"{key}: {type(exc).__name__}: {exc}")
            continue
        storage.set_trial_state_values(trial_id, state=TrialState.COMPLETE, values=[value])


def requeue(study, trial) -> None:
    """A WAITING copy of a trial stopped before its end (Ctrl-C): whoever claims it resumes the run."""
    import optuna

    with optuna_quiet():
        optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=None)(study, trial)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def release(shared: Shared) -> list[str]:
    """After Ctrl-C or SIGTERM stopped this machine's worker processes: the runs of workers on this machine that are
    gone go back to the queue now (not after the heartbeat's grace period), for any worker to resume. Returns the
    runs released."""
    import optuna
    from optuna.trial import TrialState

    storage = open_storage(shared)
    study = optuna.load_study(study_name=shared.name, storage=storage)
    study_id, released = storage.get_study_id_from_name(shared.name), []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if _gone_from_here(trial.user_attrs.get("worker", "")):
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
            if storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                requeue(study, storage.get_trial(trial_id))
                released.append(trial.user_attrs["run"])
    return released


def _gone_from_here(worker: str) -> bool:
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)  # PermissionError: alive, another user's
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    return False


def _another_has(study, key: str, number: int) -> bool:
    """Another trial of the same run finished, or is running under a lower number (two commands that enqueued a
    failed run again at the same moment: the lower number trains it)."""
    from optuna.trial import TrialState

    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING)):
        if t.number != number and t.user_attrs.get("run") == key and (t.state == TrialState.COMPLETE or t.number < number):
            return True
    return False


def unfinished(study, keys: list[str]) -> dict[str, str]:
    """{key: why it did not finish} for the study's runs without a COMPLETE trial."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    why = {}
    for key in keys:
        mine = [t for t in trials if t.user_attrs.get("run") == key]
        if any(t.state == TrialState.COMPLETE for t in mine):
            continue
        errors = [t.user_attrs["error"] for t in mine if "error" in t.user_attrs]
        why[key] = errors[-1] if errors else f"not finished (its worker stopped {MAX_RETRIES + 1} times)"
    return why


def require_all(study, keys: list[str], shared: Shared) -> None:
    why = unfinished(study, keys)
    if why:
        raise RunDirError(
            f"runs of study {shared.name!r} that did not finish (the others did and are reused; rerun the command to train "
            "these again):\n  " + "\n  ".join(f"{k}: {w}" for k, w in why.items())
        )

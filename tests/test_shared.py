"""Studies shared by workers on several machines (training/shared.py), on a real PostgreSQL server that the tests
start and stop themselves (Debian's; as the postgres user when run as root). Processes on this machine stand for
machines; a killed process for a machine that died."""

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from cxrlab.data.phantom import write_phantom
from cxrlab.errors import ConfigError
from cxrlab.training import shared as engine
from tests.postgres import server_bin, throwaway_server

PASSWORD = "pw-never-shown-3f9c1"  # in every URL below; the server trusts local connections, so it is never checked
COMPARE = ["--models", "mobilenet_v3_large", "--seeds", "0", "1", "--ensemble", "off", "--tta", "0", "--epochs", "4", "--score-test"]
COMMON = ["--batch-size", "32", "--n-bootstrap", "20", "--device", "cpu", "--threads", "1", "--workers", "1", "--no-progress"]
TIMINGS = ("train_seconds", "ms_per_image", "images_per_s", "int8_")  # a run's timings are the machine's, not the study's


@pytest.fixture(scope="session")
def postgres():
    """A throwaway PostgreSQL server for the session: a function that makes a database and returns its URL."""
    if server_bin() is None:
        if os.environ.get("CXRLAB_REQUIRE_POSTGRES"):
            pytest.fail("PostgreSQL is not installed: `make postgres` installs Debian's")
        pytest.skip("PostgreSQL is not installed (`make postgres` installs Debian's)")
    with throwaway_server() as database:
        yield database


@pytest.fixture
def database(postgres):
    """A new database on the session's server: its URL, with a password that must never be shown."""
    return postgres(f"t_{uuid.uuid4().hex[:16]}", PASSWORD)


def cxrlab(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cxrlab", *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process: subprocess.Popen, timeout: int = 600) -> str:
    out, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, out
    return out


def rows(path: Path) -> list[dict]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


def without(rows_: list[dict], *keys) -> list[dict]:
    return [{k: v for k, v in row.items() if not k.startswith(keys)} for row in rows_]


@pytest.fixture(scope="module")
def one_machine(phantom_root, tmp_path_factory):
    """The study run by one command on one machine, no database: what the shared runs must equal."""
    out = tmp_path_factory.mktemp("one_machine") / "study"
    finish(cxrlab("compare", "--data-root", phantom_root, *COMPARE, *COMMON, "--out", out))
    return out


def test_a_killed_worker_s_run_is_resumed_by_another_and_the_study_equals_one_machine_s(phantom_root, one_machine, database, tmp_path):
    out = tmp_path / "study"
    args = ["compare", "--data-root", phantom_root, *COMPARE, *COMMON, "--out", out, "--storage", database, "--heartbeat", "1"]
    doomed, survivor = cxrlab(*args), None
    try:
        victim = None
        deadline = time.monotonic() + 300
        while victim is None and time.monotonic() < deadline:  # kill it once an epoch of its run is saved, before its end
            if survivor is None and (out / engine.STUDY_FILE).is_file():
                survivor = cxrlab(*args)  # the second machine joins the study the first one created
            for run in (out / "runs").glob("*") if (out / "runs").is_dir() else []:
                marker, history = run / "worker.json", run / "history.csv"
                try:
                    mine = json.loads(marker.read_text())["pid"] == doomed.pid
                    epochs = len(history.read_text().splitlines()) - 1
                except (OSError, ValueError, KeyError):
                    continue
                if mine and 1 <= epochs < 4 and not (run / "summary.json").exists():
                    doomed.send_signal(signal.SIGKILL)
                    victim = run.name
            time.sleep(0.05)
        assert victim is not None, "the first worker's run ended before it could be killed"
        said = doomed.communicate()[0] + finish(survivor)
    finally:
        for process in (doomed, survivor):
            if process is not None and process.poll() is None:
                process.kill()
    assert doomed.returncode == -signal.SIGKILL
    assert f"resuming {out / 'runs' / victim}" in said or f"resuming {(out / 'runs' / victim).resolve()}" in said
    for run in ("mobilenet_v3_large-seed0", "mobilenet_v3_large-seed1"):  # every epoch once, as on one machine
        assert without(rows(out / "runs" / run / "history.csv"), "seconds") == without(
            rows(one_machine / "runs" / run / "history.csv"), "seconds"
        )
    assert without(rows(out / "comparison.csv"), *TIMINGS) == without(rows(one_machine / "comparison.csv"), *TIMINGS)

    import optuna

    study = optuna.load_study(study_name="compare-study", storage=database)
    states = {}
    for t in study.trials:
        states.setdefault(t.user_attrs["run"], []).append(t.state.name)
    assert sorted(states[victim]) == ["COMPLETE", "FAIL"]  # the dead worker's trial, then its retry: trained to the end once
    assert [s for run, s in states.items() if run != victim] == [["COMPLETE"]]
    for text in (said, *(p.read_text() for p in out.rglob("*") if p.suffix in (".yaml", ".md", ".html", ".json", ".csv"))):
        assert PASSWORD not in text


def test_two_machines_commands_finish_the_study_between_them_as_one_machine_would(phantom_root, one_machine, database, tmp_path):
    out = tmp_path / "study"
    args = ["compare", "--data-root", phantom_root, *COMPARE, *COMMON, "--out", out, "--storage", database, "--study", "pair"]
    first, second = cxrlab(*args), cxrlab(*args)
    said = finish(first) + finish(second)
    assert said.count("epoch   4/4") == 2  # two runs, each trained to its end once, by one of the two
    assert without(rows(out / "comparison.csv"), *TIMINGS) == without(rows(one_machine / "comparison.csv"), *TIMINGS)


def test_a_grid_search_with_three_workers_visits_every_point_once(database, tmp_path):
    data = tmp_path / "data"
    write_phantom(data, size=28, seed=3, split_sizes={"train": 160, "val": 80, "test": 40})
    out = tmp_path / "grid"
    args = ["search", "--method", "grid", "--data-root", data, "--model", "mobilenet_v3_large", "--epochs", "1"]
    args += ["--n-bootstrap", "20", "--device", "cpu", "--threads", "1", "--workers", "1", "--out", out, "--storage", database]
    workers = [cxrlab(*args) for _ in range(3)]
    for worker in workers:
        finish(worker)
    trials = rows(out / "search.csv")
    points = {(t["batch"], t["lr"], t["dropout"]) for t in trials}
    assert len(trials) == 27 and len(points) == 27 and {t["state"] for t in trials} == {"complete"}
    assert len({t["run"] for t in trials}) == 27


def test_storage_that_cannot_be_used_is_named_without_its_password(phantom_root, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    url = f"postgresql+psycopg2://cxrlab:{PASSWORD}@127.0.0.1:{closed}/studies"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "cxrlab",
            "cv",
            "--data-root",
            str(phantom_root),
            "--folds",
            "2",
            "--out",
            str(tmp_path / "cv"),
            "--storage",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and PASSWORD not in result.stdout + result.stderr
    assert (
        result.stderr.strip()
        == f"error: cannot use the study storage, postgresql database 'studies' on 127.0.0.1:{closed}: no server answers there"
    )


def test_a_worker_of_another_study_or_without_the_shared_folder_is_refused_before_it_trains(database, tmp_path):
    shared = engine.Shared(database, "s", heartbeat_s=1)
    fingerprint = {"data_md5": "abc", "runs": {"densenet121-seed0": {"epochs": 3, "lr": 0.001}}}
    engine.join(shared, ["densenet121-seed0"], fingerprint, tmp_path / "study")
    other = {"data_md5": "abd", "runs": {"densenet121-seed0": {"epochs": 4, "lr": 0.001}}}
    with pytest.raises(ConfigError) as refused:
        engine.join(shared, ["densenet121-seed0"], other, tmp_path / "study")
    assert "data_md5 is 'abc' there, 'abd' here" in str(refused.value) and "runs.densenet121-seed0.epochs is 3 there, 4 here" in str(
        refused.value
    )
    assert PASSWORD not in str(refused.value)
    with pytest.raises(ConfigError, match="does not see study 's''s folder"):
        engine.join(shared, ["densenet121-seed0"], fingerprint, tmp_path / "elsewhere")  # no shared file system
    engine.join(shared, ["densenet121-seed0"], fingerprint, tmp_path / "study")  # the same study, the same folder: joined
    with pytest.raises(ConfigError, match="heartbeat must be at least 1 second, got 0"):
        engine.Shared(database, "s", heartbeat_s=0)


def test_ctrl_c_puts_the_run_back_in_the_queue_for_any_worker(database, tmp_path):
    import optuna

    shared = engine.Shared(database, "interrupted", heartbeat_s=1)
    engine.join(shared, ["fold0", "fold1"], {"runs": {}}, tmp_path)

    def interrupted(key, trial_id):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        engine.work(shared, interrupted)
    seen = []
    assert engine.work(shared, lambda key, trial_id: seen.append(key) or 1.0) == []
    assert sorted(seen) == ["fold0", "fold1"]  # the interrupted run went back to the queue and was taken again
    trials = optuna.load_study(study_name="interrupted", storage=database).trials
    assert sorted((t.user_attrs["run"], t.state.name) for t in trials) == [("fold0", "COMPLETE"), ("fold0", "FAIL"), ("fold1", "COMPLETE")]


def test_a_retried_search_trial_resumes_its_first_trial_s_folder_and_the_cap_counts_first_trials_only(tmp_path, monkeypatch):
    import optuna

    from cxrlab.config import Config
    from cxrlab.report import search

    trained = []
    monkeypatch.setattr(search, "train_trial", lambda cfg, on_epoch=None: trained.append(Path(cfg.out).name) or 0.5)
    shared = engine.Shared(f"sqlite:///{tmp_path / 'study.db'}", "tpe", heartbeat_s=1)
    study = optuna.create_study(study_name="tpe", storage=engine.open_storage(shared), direction="maximize")
    first = study.ask()
    for name, values in search.SPACE.items():
        first.suggest_categorical(name, values)
    study.tell(first, state=optuna.trial.TrialState.FAIL)  # its worker died
    engine.requeue(study, study.trials[0])  # what the heartbeat's retry does: trial 1, the same parameters
    base = Config(data_root=str(tmp_path), model="mobilenet_v3_large", epochs=1, device="cpu")
    study.optimize(search.objective(base, tmp_path, cap=1), n_trials=1)
    assert trained == ["trial000"] and study.trials[1].params == study.trials[0].params  # the retry: its first trial's folder
    study.optimize(search.objective(base, tmp_path, cap=1), n_trials=1)  # a new trial: the study already has its 1
    assert trained == ["trial000"] and study.trials[2].user_attrs[search.OVER_CAP] and study.trials[2].state.name == "PRUNED"


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl_c", "scheduler"])
def test_stopping_a_machine_with_two_workers_hands_both_runs_back_at_once_and_the_command_resumes_them(database, tmp_path, stop):
    """cv through the database, two folds side by side: Ctrl-C (SIGINT to the process group, as a terminal sends
    it) or a scheduler's SIGTERM (scancel) after an epoch puts both runs back in the study's queue at once (not
    after the heartbeat's grace period); the same command then resumes both."""
    import optuna

    write_phantom(tmp_path / "data", size=28, seed=2, split_sizes={"train": 400, "val": 100, "test": 100})
    out = tmp_path / "cv"
    args = ["cv", "--data-root", tmp_path / "data", "--model", "mobilenet_v3_large", "--folds", "2", "--epochs", "2"]
    args += ["--batch-size", "32", "--n-bootstrap", "20", "--device", "cpu", "--workers", "2", "--threads", "1", "--out", out]
    args += ["--no-progress", "--storage", database]
    command = [sys.executable, "-m", "cxrlab", *map(str, args)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.monotonic() + 300
    while not all((out / f"fold{k}" / "history.csv").is_file() for k in (0, 1)):
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "no epoch finished in 300 s"
        time.sleep(0.1)
    os.killpg(proc.pid, stop)
    try:
        said, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"cv did not stop within 60 s of {stop.name}")
    assert proc.returncode == 130, said
    assert "back in study 'cv-cv''s queue for any worker to resume: fold" in said
    waiting = optuna.load_study(study_name="cv-cv", storage=database).get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert sorted(t.user_attrs["run"] for t in waiting) == ["fold0", "fold1"]
    again = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count("after epoch") == 2 and (out / "cv.md").is_file() and PASSWORD not in said + again.stdout


def test_a_search_trial_resumed_after_its_worker_died_still_never_loads_test(phantom_root, tmp_path):
    from cxrlab.config import Config
    from cxrlab.core.runs import RunDir
    from cxrlab.report import search
    from cxrlab.training.loop import train

    cfg = search.trial_config(
        Config(data_root=str(phantom_root), model="mobilenet_v3_large", epochs=2, n_bootstrap=20, device="cpu", threads=1),
        {"batch_size": 32, "lr": 1e-3, "dropout": 0.4},
        tmp_path / "trials" / "trial000",
    )

    def dies(epoch, row):
        raise KeyboardInterrupt  # the worker stops after its first epoch is saved

    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=False, on_epoch=dies, search_trial=True)
    assert search.train_trial(cfg) > 0  # the retry resumes the folder
    run = RunDir(cfg.out)
    assert len(run.history.read_text().splitlines()) == 3 and run.metrics("val").is_file() and not run.metrics("test").exists()
    assert set(json.loads(run.data.read_text())["counts"]) == {"train", "val"}

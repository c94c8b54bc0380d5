"""A study's choices, written down before its test is read, and the seal that keeps test closed until then.

    OUT/choices.json   every entry (a run, a run with TTA, the ensemble) of every seed: its runs, TTA views, ensemble
                       weights, operating point (single threshold and refer band) and temperature, each chosen on the
                       evidence only; the headline entry by its fixed rule; the MD5 of every run's weights and
                       out-of-distribution check. Its SHA-256 is what the report names.
    OUT/seal.json      'sealed' (choices written, test never loaded) or 'scored' (when, by which choices, how often)

Scoring reads test once, by exactly these choices (report/compare.py: ``score_study``); scoring again needs
``rescore`` and the report then says so. A study whose runs or choices changed since they were written is refused,
naming what differs.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path

from cxrlab.console import logger
from cxrlab.core.runs import RunDir
from cxrlab.errors import RunDirError
from cxrlab.files import atomic_write_json, atomic_write_text, file_md5
from cxrlab.layout import STUDY_FILES

log = logger(__name__)

FORMAT = 1
LOCK_WAIT_S = 1800  # how long a second scorer waits for the first (a study's scoring takes minutes)
UNSEALED = "unsealed: trained before cxrlab sealed test (its runs scored test when they finished)"


def cxrlab_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cxrlab")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def entry_key(name: str, seed: int) -> str:
    return f"{name} / seed {seed}"


def run_fingerprint(run: RunDir) -> dict:
    """What a run answers with, by MD5: its weights and its out-of-distribution check (None: it has none)."""
    return {
        "weights_md5": file_md5(run.weights),
        "ood_md5": file_md5(run.ood_arrays) if run.ood_arrays.is_file() else None,
    }


def choices_record(out: Path, runs, data_md5: str, rules: dict, headline: dict | None, entries: dict) -> dict:
    """choices.json's content, in the one layout every study writes (compare, cv, the 14-label compare)."""
    from cxrlab.report.study import within

    return {
        "format": FORMAT,
        "written": time.strftime("%Y-%m-%d %H:%M:%S"),
        "cxrlab": cxrlab_version(),
        "data_md5": data_md5,
        "rules": rules,
        "headline": headline,
        "runs": {run.path.name: {"path": within(run.path, out), **run_fingerprint(run)} for run in runs},
        "entries": entries,
    }


def entry_record(entry, tta_views: int = 1, weights: dict | None = None) -> dict:
    """One entry of choices.json (``entry``: report/study.py's Entry, chosen): what ``EntryModel.from_choices`` loads."""
    return {
        "name": entry.name,
        "kind": entry.kind,
        "seed": entry.seed,
        "runs": [Path(r).name for r in entry.info["runs"]],
        "tta_views": tta_views,
        "tta_seed": entry.seed,
        "weights": weights,
        "point": entry.info["point"],
        "temperature": entry.info["temperature"],
        "evidence": {k: entry.info[k] for k in ("evidence_roc_auc", "check") if k in entry.info},
    }


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_was_sealed(run: RunDir) -> bool:
    """The run never loaded test: trained sealed, with no test metrics of its own."""
    return bool(run.load_config().sealed) and not run.metrics("test").exists()


class Seal:
    """A study folder's choices and seal (see the module's docstring)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.choices_file = self.folder / STUDY_FILES["choices"]
        self.seal_file = self.folder / STUDY_FILES["seal"]

    @property
    def state(self) -> dict:
        """The seal: {'state': 'sealed' | 'scored', 'choices_sha256', ...}; {} for a study with no choices written
        (trained before sealing, or not yet chosen)."""
        if not self.seal_file.is_file():
            return {}
        return json.loads(self.seal_file.read_text())

    def describe(self) -> str:
        """One line for `cxrlab status` and the report."""
        state = self.state
        if not state:
            return "no choices written (a study trained before cxrlab sealed test, or not yet chosen)"
        sha = state["choices_sha256"]
        if not self.runs_sealed():
            return f"{UNSEALED}; choices SHA-256 {sha}"
        if state["state"] == "sealed":
            return (
                f"test sealed: never loaded; choices written {state['sealed_at']} (SHA-256 {sha}); "
                f"score it once with `cxrlab score {self.folder}`"
            )
        if state.get("scored_by") != sha:  # choices written again (--rescore) after test was scored by others
            return f"test scored by earlier choices (SHA-256 {state.get('scored_by')}); these (SHA-256 {sha}) are not scored yet"
        times = "once" if state["scored_times"] == 1 else f"{state['scored_times']} times (RESCORED)"
        return f"test scored {times}, last {state['scored_at']}, by the choices written {state['sealed_at']} (SHA-256 {sha})"

    def runs_sealed(self) -> bool:
        """Every run of the choices never loaded test: trained sealed, and no test metrics of its own since."""
        runs = json.loads(self.choices_file.read_text())["runs"] if self.choices_file.is_file() else {}
        return all(run_was_sealed(RunDir(self.folder / run["path"])) for run in runs.values())

    def write(self, choices: dict, rescore: bool = False) -> str:
        """Write the choices (unless the same ones are written already) and seal the study; returns their SHA-256.
        Choices that differ from those a scored study was scored by are refused unless ``rescore``."""
        state = self.state
        if self.choices_file.is_file() and state:
            changed = differences(json.loads(self.choices_file.read_text()), choices)
            if not changed:
                return state["choices_sha256"]
            if state["state"] == "scored" and not rescore:
                raise RunDirError(
                    f"{self.folder}'s test was scored {state['scored_at']} by other choices (SHA-256 "
                    f"{state['choices_sha256'][:12]}…; these runs and options choose differently: {', '.join(changed)}). "
                    "Scoring them would read test a second time: pass --rescore to do it anyway (the report then says it was rescored)"
                )
        text = json.dumps(choices, indent=2) + "\n"
        atomic_write_text(self.choices_file, text)
        digest = hashlib.sha256(text.encode()).hexdigest()
        atomic_write_json(
            self.seal_file,
            {
                **state,
                "state": "scored" if state.get("state") == "scored" else "sealed",
                "choices_sha256": digest,
                "sealed_at": time.strftime("%Y-%m-%d %H:%M:%S"),
                "scored_times": state.get("scored_times", 0),
            },
        )
        log.info(f"choices written: {self.choices_file} (SHA-256 {digest})")
        return digest

    def open_for_scoring(self, rescore: bool = False) -> tuple[dict, str]:
        """(choices, their SHA-256) for scoring: ``verified`` choices, and test not scored yet (or ``rescore``)."""
        state = self.state
        if state.get("state") == "scored" and not rescore:
            raise RunDirError(
                f"{self.folder}'s test was scored already, {state['scored_at']}, by these choices: scoring it again reads test a "
                "second time; pass --rescore to do it anyway (the report then says it was rescored)"
            )
        return self.verified()

    def verified(self) -> tuple[dict, str]:
        """(choices, their SHA-256), once they hold: written, unchanged since, and every run's weights and check as
        they were when chosen. What scoring and a deployed entry both rest on."""
        state = self.state
        if not state or not self.choices_file.is_file():
            raise RunDirError(
                f"{self.folder} has no choices written: run `cxrlab compare` for it first (it writes {STUDY_FILES['choices']})"
            )
        digest = sha256(self.choices_file)
        if digest != state["choices_sha256"]:
            raise RunDirError(
                f"{self.choices_file} changed since it was written: SHA-256 {digest}, recorded {state['choices_sha256']}; "
                "put it back, or write the choices again with the study's `cxrlab compare` command"
            )
        choices = json.loads(self.choices_file.read_text())
        self.check_runs(choices)
        return choices, digest

    def check_runs(self, choices: dict) -> None:
        """Refuse runs whose weights or check changed since the choices were written, naming the run and both MD5s."""
        changed = []
        for tag, recorded in choices["runs"].items():
            run = RunDir(self.folder / recorded["path"])
            run.require_finished()
            found = run_fingerprint(run)
            changed += [
                f"{tag} {what} {found[key]} (chosen with {recorded[key]})"
                for key, what in (("weights_md5", "weights MD5"), ("ood_md5", "check MD5"))
                if found[key] != recorded[key]
            ]
        if changed:
            raise RunDirError(f"runs changed since the study's choices were written: {'; '.join(changed)}")

    @contextmanager
    def scoring(self, wait_s: float = LOCK_WAIT_S):
        """Held while test is scored: one process at a time (the machines of a shared study finish together and each
        would score). Waits for another holder; a holder that died on this host is noticed and its lock removed."""
        lock = self.folder / STUDY_FILES["scoring_lock"]
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                break
            except FileExistsError:
                if holder_is_gone(lock):
                    lock.unlink(missing_ok=True)
                    continue
                if time.monotonic() > deadline:
                    raise RunDirError(
                        f"{lock} has been held for over {wait_s:.0f} s by {lock.read_text().strip()}; remove it if that process is gone"
                    ) from None
                time.sleep(1)
        with os.fdopen(fd, "w") as fh:
            fh.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        try:
            yield
        finally:
            lock.unlink(missing_ok=True)

    def score_once(self, rescore: bool, again_is_done: bool, score):
        """Run ``score(choices, digest)`` holding the scoring lock, by ``open_for_scoring``'s choices; with
        ``again_is_done`` (``--score-test``), test scored already by these very choices is not an error but done (as
        when another machine of a shared study scored it first): returns None then."""
        with self.scoring():
            if again_is_done and not rescore and self.scored_by(self.state.get("choices_sha256")):
                log.info(f"\n{self.describe()}: the report stands (--rescore scores it again)")
                return None
            return score(*self.open_for_scoring(rescore))

    def scored_by(self, digest: str) -> bool:
        """Whether test was scored already by exactly these choices."""
        state = self.state
        return state.get("state") == "scored" and state.get("scored_by") == digest

    def mark_scored(self, digest: str) -> dict:
        state = self.state
        state.update(state="scored", scored_at=time.strftime("%Y-%m-%d %H:%M:%S"), scored_times=state.get("scored_times", 0) + 1)
        state["scored_by"] = digest
        atomic_write_json(self.seal_file, state)
        return state


def holder_is_gone(lock: Path) -> bool:
    """A lock written by a process of this host that no longer runs."""
    try:
        words = lock.read_text().split()
        pid, host = int(words[1]), words[3]
    except (OSError, ValueError, IndexError):
        return False
    if host != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def differences(old: dict, new: dict) -> list[str]:
    """The parts of two choices files that differ (their time of writing aside)."""
    keys = sorted((set(old) | set(new)) - {"written"})
    out = [k for k in keys if k != "entries" and old.get(k) != new.get(k)]
    old_entries, new_entries = old.get("entries", {}), new.get("entries", {})
    out += [f"entry {k}" for k in sorted(set(old_entries) | set(new_entries)) if old_entries.get(k) != new_entries.get(k)]
    return out

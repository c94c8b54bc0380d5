"""A new site in Python: check a batch of its images against an entry's evidence, re-choose the entry's operating
point on its labelled images, and load the site folder that then answers (``load_site``), as predict and serve do."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cxrlab.api.entry import StudyEntry, load_entry, names_an_entry
from cxrlab.api.run import Run, answers, explain_paths, load_run
from cxrlab.errors import ConfigError, RunDirError
from cxrlab.limits import DEFAULT_MAX_PIXELS


def is_site(path) -> bool:
    from cxrlab.layout import SITE_FILE

    return (Path(path) / SITE_FILE).is_file()


def load_answerer(path, entry: str | None = None, seed: int | None = None, backend: str = "auto", device: str | None = None):
    """What answers for ``path``: a site folder (``load_site``), a study's entry (``load_entry``) or a run."""
    if is_site(path):
        if entry is not None or seed is not None:
            raise ConfigError(f"{path} is a site folder: it answers with the entry it was calibrated for; leave --entry and --seed out")
        return load_site(path, device)
    if names_an_entry(path, entry, seed):
        if backend not in (None, "auto", "pytorch"):
            raise ConfigError("a study's entry answers by PyTorch, the route its study was scored by: leave --backend out")
        return load_entry(path, entry, seed, device)
    return load_run(path, backend=backend, device=device)


def fingerprint(source) -> dict:
    """What a site's operating point was chosen for: a study entry's choices (their SHA-256) or a run's weights (MD5)."""
    from cxrlab.core.runs import RunDir
    from cxrlab.files import file_md5

    if isinstance(source, StudyEntry):  # load_entry checked its choices and runs
        return {
            "kind": "study entry",
            "path": str(source.study.resolve()),
            "entry": source.model.name,
            "seed": source.model.seed,
            "choices_sha256": source.choices_sha256,
        }
    return {"kind": "run", "path": str(source.path.resolve()), "weights_md5": file_md5(RunDir(source.path).weights)}


def site_check(path, images: list, entry: str | None = None, seed: int | None = None, out=None, split: str | None = None,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> dict:  # fmt: skip
    """Whether a batch of a site's unlabelled images differs from the evidence the entry's operating point was chosen
    on (report/site.py, evaluation/shift.py); written to ``out`` (site_check.json, site_scores.png) when given."""
    from cxrlab.data.site import unlabelled
    from cxrlab.report.site import check_site

    model = load_answerer(path, entry, seed, backend="pytorch").trained()
    site = unlabelled([str(p) for p in images], model.cfg.size, lambda f: model.load(f, max_pixels), split)
    return check_site(model, site, Path(out) if out else None)


def site_calibrate(path, labelled, out, site: str, entry: str | None = None, seed: int | None = None, split: str | None = None,
                   max_pixels: int = DEFAULT_MAX_PIXELS, adapt: str | None = None) -> SiteEntry:  # fmt: skip
    """Re-choose an entry's (or run's) operating point on a site's labelled images and write it to the new folder
    ``out``, which then answers as ``load_site`` loads it. Never writes into the entry's own folder. ``adapt``:
    'batchnorm' (BatchNorm statistics re-estimated on the labelled images, labels unused) or 'fine-tune' (on a
    stratified half of them, the point then chosen on the other half); the site folder keeps the adapted weights."""
    from cxrlab.data.site import labelled as read_labelled
    from cxrlab.report.site import calibrate_site

    if is_site(path):
        raise ConfigError(f"{path} is a site folder already: calibrate the entry it came from, {load_site(path).record['source']['path']}")
    out, source = Path(out), load_answerer(path, entry, seed, backend="pytorch")  # the route load_site answers by
    home = Path(source.study if isinstance(source, StudyEntry) else source.path).resolve()
    if out.resolve() == home or home in out.resolve().parents or (out.exists() and any(out.iterdir())):
        raise ConfigError(f"--out {out}: a site folder is new and outside the entry's own folder ({home}); choose another")
    model = source.trained()
    found = read_labelled(labelled, model.cfg.size, model.classes, model.cfg.positive, lambda f: model.load(f, max_pixels), split)
    calibrate_site(model, found, site, Path(labelled), fingerprint(source), out, adapt)
    return load_site(out)


def load_site(folder, device: str | None = None) -> SiteEntry:
    """A site folder: its entry (a study's, checked unchanged by its choices' SHA-256, or a run, by its weights' MD5)
    answering by the operating point chosen at the site."""
    from cxrlab.evaluation.operating_point import OperatingPoint
    from cxrlab.evaluation.site_point import SiteModel
    from cxrlab.report.site import read_site

    record = read_site(Path(folder))
    where = record["source"]
    if where["kind"] == "study entry":
        source = load_entry(where["path"], where["entry"], where["seed"], device)
    else:
        source = load_run(where["path"], backend="pytorch", device=device)
    found = fingerprint(source)
    if found != where:
        changed = ", ".join(f"{k} {found.get(k)} (calibrated for {where.get(k)})" for k in where if found.get(k) != where.get(k))
        raise RunDirError(f"{folder}: the entry it was calibrated for changed since: {changed}; calibrate it again")
    data = record["data"]
    line = f"operating point chosen at site {record['site']} on {data['images']} images ({data['positives']} positives), {record['chosen']}"
    model = source.trained()
    if record.get("adaptation"):
        from cxrlab.report.site import load_adapted

        model = load_adapted(Path(folder), model, record["adaptation"]["weights_md5"])
        line += f", after adapting the model to the site ({record['adaptation']['kind']})"
    model = SiteModel(model, OperatingPoint.from_dict(record["point"]), line)
    return SiteEntry(Path(folder), source, model, record)


@dataclass
class SiteEntry:
    """An entry answering by a site's operating point (``load_site``): it predicts and explains as a run does."""

    folder: Path
    source: Run | StudyEntry
    model: object  # evaluation.site_point.SiteModel
    record: dict = field(repr=False)

    @property
    def name(self) -> str:
        inner = self.source.name if isinstance(self.source, StudyEntry) else self.source.path.name
        return f"{inner} at site {self.record['site']}"

    @property
    def config(self):
        return self.source.config

    @property
    def site_line(self) -> str:
        return self.model.site_line

    def trained(self, device: str | None = None):
        return self.model

    def predict(self, images, max_pixels: int = DEFAULT_MAX_PIXELS, decision: str | None = None) -> list:
        """As ``Run.predict``, by the site's operating point."""
        return answers(self.model, images, max_pixels, decision)

    def decode(self, data: bytes, name: str, max_pixels: int = DEFAULT_MAX_PIXELS):
        return self.source.decode(data, name, max_pixels)

    def explainer(self):
        return self.source.explainer()

    def explain_image(self, image, name: str = "image"):
        from cxrlab.evaluation.explain import explain_image

        return explain_image(self.explainer(), image, name, answerer=self.model)

    def explain(self, images, out=None, max_pixels: int = DEFAULT_MAX_PIXELS) -> list:
        return explain_paths(self.explainer(), images, out, max_pixels, answerer=self.model)

    def __repr__(self) -> str:
        return f"SiteEntry({str(self.folder)!r}): {self.name}; {self.model.point.describe()}; {self.site_line}"

"""cxrlab: chest X-ray classification on MedMNIST (ChestMNIST, PneumoniaMNIST).

The Python API (the CLI calls the same functions; see cxrlab/api.py and the README's "Python API"):

    import cxrlab
    run = cxrlab.train(cxrlab.Config(dataset="pneumoniamnist", download=True, epochs=5, out="runs/mnv3"))
    run.metrics("test"), run.history, run.predict(["xray.png"]), run.explain(["xray.png"])
    report = cxrlab.compare(epochs=3, seeds=[0, 1], out="runs/study")
"""

__version__ = "0.1.0"

__all__ = [
    "Config",
    "Report",
    "Run",
    "SiteEntry",
    "StudyEntry",
    "Table",
    "bench",
    "compare",
    "create_model",
    "cross_validate",
    "describe_data",
    "evaluate",
    "fit_ood",
    "load_data",
    "load_entry",
    "load_run",
    "load_site",
    "operating_point",
    "phantom",
    "resume",
    "robustness",
    "score",
    "seal",
    "search",
    "site_calibrate",
    "site_check",
    "status",
    "study",
    "train",
    "write_answers",
]


def __getattr__(name: str):
    # Imported on first use, so that `cxrlab --help` and worker processes do not pay for torch before they need it.
    if name == "Config":
        from cxrlab.config import Config

        return Config
    if name == "create_model":
        from cxrlab.models.registry import create_model

        return create_model
    if name in __all__:
        from cxrlab import api

        return getattr(api, name)
    raise AttributeError(f"module 'cxrlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])

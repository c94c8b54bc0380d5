"""The decision-support web service: FastAPI on uvicorn, one trained run loaded once at start-up.

    GET  /          the web page (drop an image: probability, class, Grad-CAM, disclaimer)
    POST /predict   one or more images (PNG, JPEG, DICOM, ...) -> class, probability, threshold per image
    POST /explain   one image -> Grad-CAM overlay PNG
    GET  /health    liveness
    GET  /model     config, data provenance, val and test metrics, backend
    GET  /docs      OpenAPI documentation

Bad input never takes the server down: a body over the upload limit or an image declaring more pixels than
the pixel limit (checked from its header, before decoding: decompression bombs) 413, not an image 415, a
damaged image or DICOM 422, each with a message naming the problem. Endpoints are plain functions, run by FastAPI in a thread pool;
the inference backends are safe to call concurrently and Grad-CAM takes a lock (it hooks the model).
"""

from __future__ import annotations

import math
from html import escape
from importlib import resources
from pathlib import Path

import torch
from fastapi import FastAPI, File, HTTPException, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, Response

import cxrlab
from cxrlab.data.datasets import get_dataset
from cxrlab.data.images import DEFAULT_MAX_PIXELS
from cxrlab.errors import ConfigError, DamagedImage, ImageFileError, ImageTooLarge, UnsupportedImage
from cxrlab.evaluation.explain import Explainer, png_bytes
from cxrlab.evaluation.inference import TrainedModel, load_trained
from cxrlab.export.runtime import attach_runtime

DISCLAIMER = ("Decision support only, not a diagnosis: a research model's output for a qualified reader to weigh. "
              "It must not be the basis of a clinical decision on its own.")
PHANTOM_NOTE = "This model was trained on PHANTOM (synthetic) data: its outputs mean nothing clinically."
DEFAULT_MAX_UPLOAD_MB = 10.0
DEFAULT_MAX_IMAGE_MP = DEFAULT_MAX_PIXELS / 1e6


class Service:
    """What every request shares: the model (loaded once), its explainer and the response constants."""

    def __init__(self, run_path, backend: str = "auto", device: str | None = "cpu", max_pixels: int = DEFAULT_MAX_PIXELS):
        self.trained: TrainedModel = load_trained(run_path, device)
        self.max_pixels = max_pixels
        if self.trained.cfg.task != "binary":
            raise ConfigError("the service serves binary-task runs (one class and probability per image)")
        self.backend = attach_runtime(self.trained, backend)
        self.explainer = Explainer(self.trained)
        summary = self.trained.run.read_json(self.trained.run.summary)
        self.version = f"{Path(self.trained.run.path).name} (finished {summary['finished']}, cxrlab {cxrlab.__version__})"

    def predict(self, name: str, data: bytes) -> dict:
        t = self.trained
        gray = t.decode(data, name, self.max_pixels)
        p1 = float(t.probs(torch.from_numpy(gray[None]))[0, 0])
        positive = t.cfg.positive
        probability = p1 if t.classes.index(positive) == 1 else 1 - p1
        negative = next(c for c in t.classes if c != positive)
        return {
            "filename": name,
            "class": positive if probability >= t.threshold else negative,
            "probability": probability,
            "probability_of": positive,
            "threshold": t.threshold,
            "model": t.cfg.model,
            "model_version": self.version,
            "backend": self.backend,
            "trained_on_phantom": t.is_phantom,
            "disclaimer": DISCLAIMER + (" " + PHANTOM_NOTE if t.is_phantom else ""),
        }

    def explain(self, name: str, data: bytes) -> bytes:
        gray = self.trained.decode(data, name, self.max_pixels)
        return png_bytes(self.explainer.overlays(torch.from_numpy(gray[None]))[0])

    def task_line(self) -> str:
        """What the model tells apart and how an upload is prepared, in the run's own words."""
        t = self.trained
        negative = next(c for c in t.classes if c != t.cfg.positive)
        how = "center-cropped to a square" if t.preprocess == "center-crop" else "resized"
        return (f"{t.cfg.model} trained on {get_dataset(t.cfg.dataset).title}: {t.cfg.positive} vs {negative}. "
                f"Each image is converted to grayscale, {how} and scaled to {t.cfg.size} x {t.cfg.size} px, as the training images were.")

    def model_card(self) -> dict:
        run = self.trained.run
        return {
            "model": self.trained.cfg.model,
            "version": self.version,
            "backend": self.backend,
            "gradcam_layer": self.explainer.layer_name,
            "dataset": get_dataset(self.trained.cfg.dataset).title,
            "preprocessing": ("center-crop to the short side, then " if self.trained.preprocess == "center-crop" else "")
                             + f"resize to {self.trained.cfg.size} x {self.trained.cfg.size} px",
            "max_image_megapixels": self.max_pixels / 1e6,
            "classes": self.trained.classes,
            "positive_class": self.trained.cfg.positive,
            "threshold": self.trained.threshold,
            "trained_on_phantom": self.trained.is_phantom,
            "data": run.read_json(run.data),
            "metrics": {"val": run.read_json(run.metrics("val")), "test": run.read_json(run.metrics("test"))},
            "config": self.trained.cfg.to_dict(),
            "disclaimer": DISCLAIMER,
        }


def _json_safe(value):
    """NaN (an undefined metric) becomes null: JSON has no NaN."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _error(status: int, message: str) -> HTTPException:
    return HTTPException(status_code=status, detail=message)


def create_app(run_path, backend: str = "auto", max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, device: str | None = "cpu",
               max_image_mp: float = DEFAULT_MAX_IMAGE_MP) -> FastAPI:
    if not max_upload_mb > 0:
        raise ConfigError(f"max_upload_mb must be positive, got {max_upload_mb}")
    if not max_image_mp > 0:
        raise ConfigError(f"max_image_mp must be positive, got {max_image_mp}")
    service = Service(run_path, backend, device, int(max_image_mp * 1e6))
    limit = int(max_upload_mb * 2**20)
    app = FastAPI(title="cxrlab", version=cxrlab.__version__,
                  description=f"Chest X-ray decision support: {' vs '.join(service.trained.classes)}. {DISCLAIMER}")
    app.state.service = service

    @app.middleware("http")
    async def refuse_large_bodies(request: Request, call_next):
        # Refused before the body is read: a declared length over the limit never reaches the parser.
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > limit:
            return JSONResponse({"detail": f"upload of {int(length) / 2**20:.1f} MB is over the limit of {max_upload_mb:g} MB"}, status_code=413)
        return await call_next(request)

    def read(upload: UploadFile) -> bytes:
        data = upload.file.read(limit + 1)
        if len(data) > limit:
            raise _error(413, f"{upload.filename}: over the upload limit of {max_upload_mb:g} MB")
        if not data:
            raise _error(422, f"{upload.filename}: empty file")
        return data

    def decoded(call, upload: UploadFile):
        name = upload.filename or "upload"
        try:
            return call(name, read(upload))
        except UnsupportedImage as exc:
            raise _error(415, str(exc)) from None
        except ImageTooLarge as exc:
            raise _error(413, str(exc)) from None
        except (DamagedImage, ImageFileError) as exc:
            raise _error(422, str(exc)) from None

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        html = resources.files("cxrlab.serve").joinpath("static/index.html").read_text()
        return (html.replace("{{DISCLAIMER}}", DISCLAIMER).replace("{{PHANTOM}}", PHANTOM_NOTE if service.trained.is_phantom else "")
                .replace("{{TASK}}", escape(service.task_line())))

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "model": service.trained.cfg.model, "backend": service.backend}

    @app.get("/model")
    def model() -> dict:
        return _json_safe(service.model_card())

    @app.post("/predict")
    def predict(files: list[UploadFile] = File(..., description="one or more images: PNG, JPEG, TIFF, BMP or DICOM")) -> dict:
        return {"results": [decoded(service.predict, f) for f in files], "disclaimer": DISCLAIMER}

    @app.post("/explain", responses={200: {"content": {"image/png": {}}}})
    def explain(file: UploadFile = File(..., description="one image")) -> Response:
        return Response(decoded(service.explain, file), media_type="image/png")

    return app


def serve(run_path, host: str = "127.0.0.1", port: int = 8000, backend: str = "auto", max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
          max_image_mp: float = DEFAULT_MAX_IMAGE_MP) -> None:
    import uvicorn

    app = create_app(run_path, backend, max_upload_mb, max_image_mp=max_image_mp)
    service = app.state.service
    print(f"serving {service.trained.cfg.model} from {run_path} ({service.backend}) on http://{host}:{port}  (docs: /docs)")
    if service.trained.is_phantom:
        print(f"note: {PHANTOM_NOTE}")
    uvicorn.run(app, host=host, port=port, log_level="info")

"""The decision-support web service: FastAPI on uvicorn, one trained run loaded once at start-up.

    GET  /          the web page (drop an image: probability, class, Grad-CAM, disclaimer)
    POST /predict   one or more images (PNG, JPEG, TIFF, BMP, DICOM) -> class, probability, threshold per image
    POST /explain   one image -> Grad-CAM overlay PNG
    GET  /health    liveness (open without a token)
    GET  /model     model, data set and provenance, metrics, threshold, preprocessing, version: no server paths or secrets
    GET  /docs      OpenAPI documentation

Locked with a token when one is set (``Authorization: Bearer TOKEN``, compared in constant time; the page takes a
one-time ``?token=`` link): a request without it gets 401 before its body is read. Bad input never takes the server
down: a body over the upload limit 413 (counted as it arrives, whatever Content-Length says), more files or decoded
pixels in one request than the request limits 413, an image declaring more pixels than the pixel limit 413 (from
its header, before decoding), not an image 415, a damaged image or DICOM or one that decodes to a single value 422,
each with a message naming the file and the problem; in a request with several files each bad file gets its own
error entry and the others are still predicted. Grad-CAM runs a bounded number at a time and answers 503 with
Retry-After when busy, so explanations never starve predictions. Uploads stay in memory and are never logged.
"""

from __future__ import annotations

import hmac
import logging
import math
import os
import re
import threading
from html import escape
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from fastapi import FastAPI, File, HTTPException, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.formparsers import MultiPartParser

import cxrlab
from cxrlab.config import PUBLIC_OPTIONS
from cxrlab.data.datasets import get_dataset
from cxrlab.data.images import decode_full, prepare
from cxrlab.errors import BlankImage, ConfigError, DamagedImage, ImageFileError, ImageTooLarge, UnsupportedImage
from cxrlab.evaluation.explain import Explainer, overlay, png_bytes
from cxrlab.evaluation.inference import TrainedModel, load_trained
from cxrlab.evaluation.ood import MESSAGE as OOD_MESSAGE
from cxrlab.evaluation.predict import predict_images
from cxrlab.evaluation.scoring import negative_class
from cxrlab.export.runtime import served
from cxrlab.limits import DEFAULT_MAX_PIXELS, EXPLAIN_SLOTS, default

DISCLAIMER = (
    "Decision support only, not a diagnosis: a research model's output for a qualified reader to weigh. "
    "It must not be the basis of a clinical decision on its own."
)
PHANTOM_NOTE = "This model was trained on PHANTOM (synthetic) data: its outputs mean nothing clinically."
RETRY_AFTER_S = 5
OPEN_PATHS = ("/health", "/", "/docs", "/openapi.json", "/docs/oauth2-redirect")  # the page asks for the token itself
PUBLIC_DATA = ("dataset", "kind", "md5", "official_md5", "classes", "counts")
ERROR_STATUS = ((UnsupportedImage, 415), (ImageTooLarge, 413), (BlankImage, 422), (DamagedImage, 422), (ImageFileError, 422))


class OutOfDistribution(ImageFileError):
    """Not explained: the run's check flags the image as unlike the training images (422)."""


class RequestTooLarge(Exception):
    """A request over one of its limits (files, decoded pixels): 413."""


class Service:
    """What every request shares: the model (loaded once), its explainer and the response constants."""

    def __init__(
        self, run_path, backend: str = "auto", device: str | None = "cpu", max_pixels: int = DEFAULT_MAX_PIXELS, threads: int | None = None
    ):
        trained = load_trained(run_path, device, threads=threads)
        if trained.cfg.task != "binary":
            raise ConfigError("the service serves binary-task runs (one class and probability per image)")
        self.trained: TrainedModel = served(trained, backend)
        self.backend = self.trained.backend
        self.max_pixels = max_pixels
        self.explainer = Explainer(self.trained)
        summary = self.trained.run.read_json(self.trained.run.summary)
        self.version = f"{Path(self.trained.run.path).name} (finished {summary['finished']}, cxrlab {cxrlab.__version__})"

    def decode(self, name: str, data: bytes, budget: list[int] | None = None) -> np.ndarray:
        """Upload bytes -> the model's input; ``budget`` (a one-item list: pixels left in this request) is spent."""
        limit = self.max_pixels if budget is None else min(self.max_pixels, budget[0])
        try:
            gray = decode_full(data, name, limit, self.trained.cfg.size)
        except ImageTooLarge:
            if budget is not None and budget[0] < self.max_pixels:
                raise RequestTooLarge(
                    f"{name}: this request's images together are over its limit of decoded pixels; send fewer or smaller images per request"
                ) from None
            raise
        if budget is not None:
            budget[0] -= gray.size
        return prepare(gray, self.trained.cfg.size, self.trained.preprocess)

    def predict(self, name: str, gray: np.ndarray) -> dict:
        """One image's answer: its class and P(positive), or, when the run's check flags the image as unlike the
        training images, no class (``in_distribution`` false, the score and threshold, and why)."""
        t = self.trained
        result = predict_images(t, gray[None], [name])[0]
        point = t.point
        answer = {
            "filename": name,
            "answer": result.answer,  # a class, or "refer": for a reader to judge (flagged, or inside the refer band)
            "in_distribution": result.in_distribution,  # null: this run has no check (fit one with cxrlab ood RUN)
            "class": result.label,  # null when referred
            "probability": result.probability,
            "probability_of": t.cfg.positive,
            "other_class": negative_class(t.classes, t.cfg.positive),
            "threshold": t.threshold,
            "decision": t.cfg.decision if point.has_band else "single",
            "rule_out": point.rule_out,
            "rule_in": point.rule_in,
            "model": t.cfg.model,
            "model_version": self.version,
            "backend": self.backend,
            "trained_on_phantom": t.is_phantom,
            "disclaimer": DISCLAIMER + (" " + PHANTOM_NOTE if t.is_phantom else ""),
        }
        if result.ood_score is not None:
            answer.update(ood_score=result.ood_score, ood_threshold=result.ood_threshold)
        if result.message:
            answer["message"] = result.message
        return answer

    def explain(self, name: str, gray: np.ndarray) -> bytes:
        """The overlay of the class /predict answers (decided by the same route); for an image in the refer band, the
        evidence for the positive class."""
        answer = predict_images(self.trained, gray[None], [name])[0]
        if answer.in_distribution is False:
            raise OutOfDistribution(f"{name}: not explained: {OOD_MESSAGE}")
        maps, _, _ = self.explainer.heatmaps(torch.from_numpy(gray[None]), [answer.label or self.trained.cfg.positive])
        return png_bytes(overlay(gray, maps[0]))

    def task_line(self) -> str:
        """What the model tells apart and how an upload is prepared, in the run's own words."""
        t = self.trained
        negative = negative_class(t.classes, t.cfg.positive)
        how = "center-cropped to a square" if t.preprocess == "center-crop" else "resized"
        return (
            f"{t.cfg.model} trained on {get_dataset(t.cfg.dataset).title}: {t.cfg.positive} vs {negative}. "
            f"Each image is converted to grayscale, {how} and scaled to {t.cfg.size} x {t.cfg.size} px, as the training images were."
        )

    def model_card(self) -> dict:
        """What a reader needs to judge the model; nothing of the server's file system and no secret."""
        run, cfg = self.trained.run, self.trained.cfg
        data = run.read_json(run.data)
        return {
            "model": cfg.model,
            "version": self.version,
            "backend": self.backend,
            "threads": self.trained.threads or os.cpu_count(),
            "gradcam_layer": self.explainer.layer_name,
            "dataset": get_dataset(cfg.dataset).title,
            "preprocessing": ("center-crop to the short side, then " if self.trained.preprocess == "center-crop" else "")
            + f"resize to {cfg.size} x {cfg.size} px",
            "max_image_megapixels": self.max_pixels / 1e6,
            "classes": self.trained.classes,
            "positive_class": cfg.positive,
            "threshold": self.trained.threshold,
            "operating_point": self.trained.point.to_dict(),
            "decision": self.trained.cfg.decision,
            "trained_on_phantom": self.trained.is_phantom,
            "ood_check": run.read_json(run.summary).get("ood"),  # null: the run has none (cxrlab ood RUN fits one)
            "data": {k: data[k] for k in PUBLIC_DATA if k in data},
            "metrics": {"val": run.read_json(run.metrics("val")), "test": run.read_json(run.metrics("test"))},
            "training": {k: getattr(cfg, k) for k in PUBLIC_OPTIONS},
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


def _error(status: int, message: str, headers: dict | None = None) -> HTTPException:
    return HTTPException(status_code=status, detail=message, headers=headers)


def status_of(exc: Exception) -> int:
    if isinstance(exc, RequestTooLarge):
        return 413
    return next(code for kind, code in ERROR_STATUS if isinstance(exc, kind))


def authorized(token: str | None, request: Request) -> bool:
    """The request carries the token (Bearer header, or ?token= for the page); compared in constant time."""
    if token is None:
        return True
    header = request.headers.get("authorization", "")
    given = header[7:] if header[:7].lower() == "bearer " else request.query_params.get("token", "") if request.url.path == "/" else ""
    return hmac.compare_digest(given.encode(), token.encode())


class BodyLimit:
    """ASGI middleware: the body is read here, up to ``limit`` bytes, before any route sees it; a body over the limit is
    answered 413 as soon as it is known to be, whatever Content-Length says or when there is none (chunked)."""

    def __init__(self, app, limit: int, max_upload_mb: float):
        self.app, self.limit, self.mb = app, limit, max_upload_mb

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length", b"")
        size = int(length) if length.isdigit() else 0
        if size > self.limit:
            return await self._refuse(scope, receive, send, f"upload of {size / 2**20:.1f} MB is over the limit of {self.mb:g} MB")
        messages, seen = [], 0
        while True:
            message = await receive()
            messages.append(message)
            seen += len(message.get("body", b""))
            if seen > self.limit:
                return await self._refuse(scope, receive, send, f"upload over the limit of {self.mb:g} MB")
            if message["type"] != "http.request" or not message.get("more_body"):
                break

        async def replay():
            return messages.pop(0) if messages else await receive()

        return await self.app(scope, replay, send)

    async def _refuse(self, scope, receive, send, message: str):
        return await JSONResponse({"detail": message}, status_code=413)(scope, receive, send)


def create_app(
    run_path,
    backend: str = "auto",
    max_upload_mb: float = default("max_upload_mb"),
    device: str | None = "cpu",
    max_image_mp: float = default("max_image_mp"),
    token: str | None = None,
    max_files: int = default("max_files"),
    max_request_mp: float = default("max_request_mp"),
    explain_slots: int = EXPLAIN_SLOTS,
    threads: int | None = None,
) -> FastAPI:
    for name, value in (
        ("max_upload_mb", max_upload_mb),
        ("max_image_mp", max_image_mp),
        ("max_files", max_files),
        ("max_request_mp", max_request_mp),
        ("explain_slots", explain_slots),
    ):
        if not value > 0:
            raise ConfigError(f"{name} must be positive, got {value}")
    if token is not None and len(token) < 16:
        raise ConfigError(
            "the access token must be at least 16 characters (e.g. python -c 'import secrets; print(secrets.token_urlsafe())')"
        )
    if threads is not None and threads < 1:
        raise ConfigError(f"threads must be at least 1 (or unset: one per core), got {threads}")
    service = Service(run_path, backend, device, int(max_image_mp * 1e6), threads)
    limit = int(max_upload_mb * 2**20)
    MultiPartParser.spool_max_size = max(MultiPartParser.spool_max_size, limit + 1)  # uploads stay in memory, never on disk
    explaining = threading.BoundedSemaphore(explain_slots)
    app = FastAPI(
        title="cxrlab",
        version=cxrlab.__version__,
        description=f"Chest X-ray decision support: {' vs '.join(service.trained.classes)}. {DISCLAIMER}",
    )
    app.state.service = service
    app.state.locked = token is not None

    app.add_middleware(BodyLimit, limit=limit, max_upload_mb=max_upload_mb)

    @app.middleware("http")  # added last, so it runs first: an unauthorised request's body is never read
    async def require_token(request: Request, call_next):
        if request.url.path not in OPEN_PATHS and not authorized(token, request):
            return JSONResponse(
                {"detail": "missing or wrong access token: send 'Authorization: Bearer TOKEN'"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        return await call_next(request)

    def read(upload: UploadFile) -> bytes:
        data = upload.file.read(limit + 1)
        if len(data) > limit:
            raise ImageTooLarge(f"{upload.filename}: over the upload limit of {max_upload_mb:g} MB")
        if not data:
            raise DamagedImage(f"{upload.filename}: empty file")
        return data

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page(request: Request) -> str:
        html = resources.files("cxrlab.serve").joinpath("static/index.html").read_text()
        shown = authorized(token, request)  # without the token the page shows only its token field
        return (
            html.replace("{{DISCLAIMER}}", DISCLAIMER)
            .replace("{{PHANTOM}}", PHANTOM_NOTE if shown and service.trained.is_phantom else "")
            .replace("{{TASK}}", escape(service.task_line()) if shown else "")
            .replace("{{LOCKED}}", "true" if token is not None else "false")
        )

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.get("/model")
    def model() -> dict:
        return _json_safe(service.model_card())

    @app.post("/predict")
    def predict(
        files: list[UploadFile] = File(..., description=f"one to {max_files} images: PNG, JPEG, TIFF, BMP or DICOM"),
    ) -> JSONResponse:
        if len(files) > max_files:
            raise _error(413, f"{len(files)} files in one request; at most {max_files} are taken (send them in several requests)")
        budget = [int(max_request_mp * 1e6)]
        results = []
        for upload in files:
            name = upload.filename or "upload"
            try:
                results.append(service.predict(name, service.decode(name, read(upload), budget)))
            except (ImageFileError, RequestTooLarge) as exc:
                results.append({"filename": name, "error": str(exc), "status": status_of(exc)})
        if all("error" in r for r in results):  # nothing to show: the request fails with the first file's reason
            raise _error(
                results[0]["status"],
                results[0]["error"] if len(results) == 1 else "no file could be read: " + "; ".join(r["error"] for r in results),
            )
        return JSONResponse({"results": results, "disclaimer": DISCLAIMER})

    @app.post(
        "/explain", responses={200: {"content": {"image/png": {}}}, 503: {"description": "busy: retry after the Retry-After seconds"}}
    )
    def explain(file: UploadFile = File(..., description="one image")) -> Response:
        if not explaining.acquire(blocking=False):
            raise _error(503, f"busy explaining other images; retry in {RETRY_AFTER_S} s", {"Retry-After": str(RETRY_AFTER_S)})
        try:
            name = file.filename or "upload"
            return Response(service.explain(name, service.decode(name, read(file))), media_type="image/png")
        except ImageFileError as exc:
            raise _error(status_of(exc), str(exc)) from None
        finally:
            explaining.release()

    return app


def is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(
    run_path,
    host: str = "127.0.0.1",
    port: int = 8000,
    backend: str = "auto",
    max_upload_mb: float = default("max_upload_mb"),
    max_image_mp: float = default("max_image_mp"),
    token: str | None = None,
    unauthenticated: bool = False,
    max_files: int = default("max_files"),
    max_request_mp: float = default("max_request_mp"),
    threads: int | None = None,
) -> None:
    import uvicorn

    if token is None and not unauthenticated and not is_loopback(host):
        raise ConfigError(
            f"serving on {host}, beyond this machine, needs an access token: --token-file PATH or CXRLAB_TOKEN "
            "(or --no-auth to serve without one, e.g. behind a proxy that authenticates)"
        )
    app = create_app(
        run_path,
        backend,
        max_upload_mb,
        max_image_mp=max_image_mp,
        token=token,
        max_files=max_files,
        max_request_mp=max_request_mp,
        threads=threads,
    )
    service = app.state.service
    threads = service.trained.threads or os.cpu_count()
    print(
        f"serving {service.trained.cfg.model} ({service.backend}, {threads} thread{'s' if threads != 1 else ''}) on "
        f"http://{host}:{port}  (docs: /docs)"
    )
    if token is not None:  # the token itself is never printed or logged: whoever started the server has it
        print(
            f"open http://{host}:{port}/ and enter the access token (from --token-file or CXRLAB_TOKEN), or open "
            f"http://{host}:{port}/?token=TOKEN with it"
        )
    else:
        print("no access token: every client that reaches this address can use the service")
    if service.trained.is_phantom:
        print(f"note: {PHANTOM_NOTE}")
    uvicorn.run(app, host=host, port=port, log_level="info", log_config=log_config())


class MaskToken(logging.Filter):
    """Uvicorn's access log writes every request's path with its query string, so the page's ``?token=`` link would put
    the token into whatever collects the console: mask it there, as Jupyter Server does."""

    PATTERN = re.compile(r"(?i)(\btoken=)[^&\s\"]+")

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(self.PATTERN.sub(r"\1[hidden]", a) if isinstance(a, str) else a for a in record.args)
        if isinstance(record.msg, str):
            record.msg = self.PATTERN.sub(r"\1[hidden]", record.msg)
        return True


def log_config() -> dict:
    """Uvicorn's own logging configuration, with the token masked in both of its handlers."""
    import copy

    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["filters"] = {"mask_token": {"()": MaskToken}}
    for handler in config["handlers"].values():
        handler["filters"] = ["mask_token"]
    return config

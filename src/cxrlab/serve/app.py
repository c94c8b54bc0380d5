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

import math
import os
import threading
from html import escape
from importlib import resources

from fastapi import FastAPI, File, HTTPException, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.formparsers import MultiPartParser

import cxrlab
from cxrlab.errors import BlankImage, ConfigError, DamagedImage, ImageFileError, ImageTooLarge, UnsupportedImage
from cxrlab.limits import EXPLAIN_SLOTS, default
from cxrlab.serve.guard import BodyLimit, authorized, is_loopback, log_config
from cxrlab.serve.service import DISCLAIMER, PHANTOM_NOTE, RequestTooLarge, Service

RETRY_AFTER_S = 5
OPEN_PATHS = ("/health", "/", "/docs", "/openapi.json", "/docs/oauth2-redirect")  # the page asks for the token itself
ERROR_STATUS = ((UnsupportedImage, 415), (ImageTooLarge, 413), (BlankImage, 422), (DamagedImage, 422), (ImageFileError, 422))


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
    entry: str | None = None,
    seed: int | None = None,
) -> FastAPI:
    limits = {"max_upload_mb": max_upload_mb, "max_image_mp": max_image_mp, "max_files": max_files, "max_request_mp": max_request_mp}
    check_settings({**limits, "explain_slots": explain_slots}, token)
    service = Service(run_path, backend, device, int(max_image_mp * 1e6), threads, entry, seed)
    limit = int(max_upload_mb * 2**20)
    MultiPartParser.spool_max_size = max(MultiPartParser.spool_max_size, limit + 1)  # uploads stay in memory, never on disk
    app = FastAPI(
        title="cxrlab",
        version=cxrlab.__version__,
        description=f"Chest X-ray decision support: {' vs '.join(service.trained.classes)}. {DISCLAIMER}",
    )
    app.state.service = service
    app.state.locked = token is not None

    app.add_middleware(BodyLimit, limit=limit, max_upload_mb=max_upload_mb)
    add_token_check(app, token)
    add_page_routes(app, service, token)
    add_image_routes(app, service, limits, threading.BoundedSemaphore(explain_slots))
    return app


def check_settings(positive: dict, token: str | None) -> None:
    for name, value in positive.items():
        if not value > 0:
            raise ConfigError(f"{name} must be positive, got {value}")
    if token is not None and len(token) < 16:
        raise ConfigError(
            "the access token must be at least 16 characters (e.g. python -c 'import secrets; print(secrets.token_urlsafe())')"
        )


def add_token_check(app: FastAPI, token: str | None) -> None:
    @app.middleware("http")  # added last, so it runs first: an unauthorised request's body is never read
    async def require_token(request: Request, call_next):
        if request.url.path not in OPEN_PATHS and not authorized(token, request):
            return JSONResponse(
                {"detail": "missing or wrong access token: send 'Authorization: Bearer TOKEN'"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        return await call_next(request)


def read_upload(upload: UploadFile, max_upload_mb: float) -> bytes:
    limit = int(max_upload_mb * 2**20)
    data = upload.file.read(limit + 1)
    if len(data) > limit:
        raise ImageTooLarge(f"{upload.filename}: over the upload limit of {max_upload_mb:g} MB")
    if not data:
        raise DamagedImage(f"{upload.filename}: empty file")
    return data


def add_page_routes(app: FastAPI, service: Service, token: str | None) -> None:
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


def add_image_routes(app: FastAPI, service: Service, limits: dict, explaining: threading.BoundedSemaphore) -> None:
    max_files, max_request_mp, max_upload_mb = limits["max_files"], limits["max_request_mp"], limits["max_upload_mb"]

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
                results.append(service.predict(name, service.decode(name, read_upload(upload, max_upload_mb), budget)))
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
            return Response(service.explain(name, service.decode(name, read_upload(file, max_upload_mb))), media_type="image/png")
        except ImageFileError as exc:
            raise _error(status_of(exc), str(exc)) from None
        finally:
            explaining.release()


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
    entry: str | None = None,
    seed: int | None = None,
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
        entry=entry,
        seed=seed,
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

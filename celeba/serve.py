"""`poetry run serve`: the model over HTTP (FastAPI + uvicorn), loaded once per process.

POST /predict (multipart upload, field `file`) -> faces with boxes, alignment, warnings and probabilities;
GET /health; the OpenAPI page is at /docs. Bad uploads get a 4xx with a message that says why;
a photo without a face is a 200 with an empty `faces` list.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, HTTPException, Query, Request, UploadFile  # module level: FastAPI resolves annotations
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.middleware.trustedhost import TrustedHostMiddleware

from celeba.config import DEFAULT_MODEL, ConfigError, at_least, fraction, opt, positive
from celeba.faces import Detector, FaceCrop
from celeba.predict import MAX_BYTES, MAX_MEGAPIXELS, ImageError, ImageTooLarge, Predictor, decode_photo_bounded
from celeba.serve_limits import Admission, BodyLimit, Load, release_memory, same_origin

log = logging.getLogger(__name__)
MULTIPART_OVERHEAD = 64 * 1024  # headers and boundaries around the file in a multipart body
DECODE_MEGAPIXELS = 12.0  # larger JPEGs are decoded at 1/2, 1/4 or 1/8 scale: faces stay far above 96 px
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
SWAGGER_ASSETS = (
    "/static/swagger"  # Swagger UI's JS and CSS, served from the fastapi-swagger package: /docs works offline
)


# --------------------------------------------------------------------------- the API's types (OpenAPI schema)


class FaceBox(BaseModel):
    """A face box in pixels of the uploaded image; (x, y) is the top-left corner."""

    x: int
    y: int
    w: int
    h: int


class FaceResult(BaseModel):
    box: FaceBox
    method: str = Field("none", description="blazeface+align, haar+framing, or none (detect=false)")
    score: float | None = Field(None, description="the detector's confidence, 0 to 1 (null: no detector score)")
    landmarks: dict[str, list[float]] | None = Field(
        None, description="left_eye, right_eye, nose, mouth as [x, y] photo pixels (null: Haar fallback)"
    )
    roll: float | None = Field(None, description="eye-line angle in the photo, degrees")
    partial_face: bool = Field(
        False, description="the face itself runs past the photo edge (a landmark or over 35% of its box)"
    )
    warnings: list[str] = Field(
        default_factory=list, description="where the face is outside the training distribution (docs/faces.md)"
    )
    probabilities: dict[str, float] = Field(description="probability of every label, 0 to 1")
    labels: list[str] = Field(description="the labels whose probability is at least the threshold")


class Prediction(BaseModel):
    file: str = Field(description="the uploaded file's name")
    width: int
    height: int
    faces: list[FaceResult] = Field(description="largest first; empty when no face was found")
    labels: list[str] = Field(description="the model's labels, in output order")


class Health(BaseModel):
    status: str
    model: str
    labels: list[str]
    image_size: int
    max_bytes: int
    max_megapixels: float
    ready: bool = True
    max_concurrent: int = 2
    max_queue: int = 8
    request_timeout: float = 30.0


class ErrorBody(BaseModel):
    detail: str = Field(
        description="what was wrong with the upload, naming it, e.g. 'x.jpg: not a decodable image (corrupt JPEG data)'"
    )


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "empty upload"},
    413: {"model": ErrorBody, "description": "upload over the byte limit, or image over the megapixel limit"},
    415: {"model": ErrorBody, "description": "not an image, or an image that cannot be decoded"},
    503: {"model": ErrorBody, "description": "busy: the queue is full or no slot came free in time (see Retry-After)"},
    422: {"description": "no `file` field in the multipart form, or a bad query parameter"},
}


def add_offline_docs(app: FastAPI) -> None:
    """FastAPI's self-hosting recipe: /docs with Swagger UI's assets from a package, not from a CDN."""
    from importlib.resources import files

    app.mount(SWAGGER_ASSETS, StaticFiles(directory=str(files("fastapi_swagger") / "resources")), name="swagger")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - API",
            swagger_js_url=f"{SWAGGER_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{SWAGGER_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{SWAGGER_ASSETS}/favicon-32x32.png",
        )


def create_app(
    predictor: Predictor | Path,
    max_bytes: int = MAX_BYTES,
    max_megapixels: float = MAX_MEGAPIXELS,
    max_concurrent: int = 2,
    decode_megapixels: float | None = DECODE_MEGAPIXELS,
    allow_origins: Sequence[str] = (),
    allowed_hosts: Sequence[str] | None = None,
    warm_up: bool = True,
    max_queue: int = 8,
    request_timeout: float = 30.0,
) -> Any:
    """The FastAPI app around one loaded model (a Predictor, or a model path to load).

    Memory is bounded: at most `max_concurrent` photos are decoded and scored at once, at most `max_queue`
    more wait for a slot, each at most `request_timeout` seconds (further or timed-out requests get 503 with
    Retry-After),
    JPEGs over `decode_megapixels` are downscaled while decoding, and no upload is read past `max_bytes`.
    Browsers: a cross-origin POST (a web page posting to this service) is refused with 403 unless its origin is
    in `allow_origins` (those get CORS headers). `allowed_hosts` (None: any) refuses other Host headers.
    """
    if not isinstance(predictor, Predictor):
        predictor = Predictor(Path(predictor))
    if warm_up:
        predictor.warm_up()
    decoding = threading.BoundedSemaphore(max_concurrent)
    load = Load(max_concurrent, max_queue)
    app = FastAPI(
        title="CelebA attributes",
        docs_url=None,
        redoc_url=None,
        description=f"Probabilities of {', '.join(predictor.labels)} for every face in a photo.",
    )
    add_offline_docs(app)

    @app.middleware("http")
    async def refuse_cross_origin_posts(request: Request, call_next: Any) -> Any:
        """Browsers send a form POST from any web page without asking (no CORS preflight): refuse those."""
        origin = request.headers.get("origin")
        if (
            origin
            and request.method not in ("GET", "HEAD", "OPTIONS")
            and "*" not in allow_origins
            and origin not in allow_origins
            and not same_origin(origin, request.headers.get("host", ""))
        ):
            return JSONResponse(
                {
                    "detail": f"cross-origin request from {origin} refused; start the service with "
                    f"--allow-origin {origin} to allow it"
                },
                status_code=403,
            )
        return await call_next(request)

    if allow_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=list(allow_origins), allow_methods=["GET", "POST"], allow_headers=["*"]
        )
    app.add_middleware(Admission, load=load)
    app.add_middleware(BodyLimit, limit=max_bytes + MULTIPART_OVERHEAD, max_bytes=max_bytes)
    if allowed_hosts is not None:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))

    @app.get("/health")
    def health() -> Health:
        return Health(
            status="ok",
            ready=True,
            model=predictor.model_path.name,
            labels=list(predictor.labels),
            image_size=predictor.image_size,
            max_bytes=max_bytes,
            max_megapixels=max_megapixels,
            max_concurrent=max_concurrent,
            max_queue=max_queue,
            request_timeout=request_timeout,
        )

    # A plain `def`: FastAPI runs it in its thread pool, so decoding and inference never block the event loop.
    @app.post("/predict", responses=ERRORS)
    def predict(
        request: Request,
        file: UploadFile,
        detect: bool = Query(True, description="false: the image already is a CelebA-style aligned crop"),
    ) -> Prediction:
        name = file.filename or "upload"
        data = file.file.read(max_bytes + 1)  # never read more than the limit allows
        rgb: np.ndarray | None = None
        found: list[FaceCrop] | None = None
        admitted = request.scope.get("state", {}).get("admitted_at", time.monotonic())
        if not decoding.acquire(timeout=max(0.0, admitted + request_timeout - time.monotonic())):
            raise HTTPException(
                503,
                f"busy: no free slot within {request_timeout:g} s (--request-timeout); retry later",
                headers={"Retry-After": str(load.retry_after())},
            )
        started = time.monotonic()
        try:  # the slot bounds the decoded pixels in memory at once
            try:
                try:
                    rgb, scale = decode_photo_bounded(data, name, max_bytes, max_megapixels, decode_megapixels)
                except ImageTooLarge as exc:
                    raise HTTPException(413, str(exc)) from None
                except ImageError as exc:
                    raise HTTPException(400 if not data else 415, str(exc)) from None
                try:
                    found = predictor.crops(rgb, detect, name)
                except ImageError as exc:  # e.g. OpenCV refuses the image's shape: the upload's fault, not a 500
                    raise HTTPException(422, str(exc)) from None
                faces = predictor.score_crops([found])[0]
                return Prediction(**predictor.result(name, rgb, faces, scale), labels=list(predictor.labels))
            finally:
                rgb = found = None  # a 116 KB PNG can decode to 120 MB: give it back now, not "some day"
                release_memory()
        finally:
            decoding.release()
            load.scored(time.monotonic() - started)

    return app


@dataclass
class ServeConfig:
    """Serve a trained model over HTTP: POST /predict, GET /health, OpenAPI page at /docs."""

    model: Path = opt(DEFAULT_MODEL, ".keras model (run card beside it) or an exported .tflite/.onnx (card beside it)")
    host: str = opt(
        "127.0.0.1",
        "interface to listen on; 0.0.0.0 (e.g. in a container) exposes the unauthenticated service to other machines",
    )
    port: int = opt(8000, "TCP port")
    max_bytes: int = opt(MAX_BYTES, "larger uploads get 413")
    max_megapixels: float = opt(MAX_MEGAPIXELS, "larger images get 413 (checked before decoding)")
    threshold: float = opt(0.5, "a label is listed for a face when its probability is at least this")
    max_faces: int = opt(10, "faces per image, largest first")
    detector: Detector = opt(
        "blazeface", "blazeface: landmarks + CelebA alignment (Haar as fallback); haar: framing only"
    )
    max_concurrent: int = opt(2, "photos decoded and scored at once (bounds memory); further requests wait")
    max_queue: int = opt(8, "requests that may wait for a slot; further ones get 503 with Retry-After at once")
    request_timeout: float = opt(30.0, "seconds a request may wait for a slot; then 503 with Retry-After")
    decode_megapixels: float = opt(DECODE_MEGAPIXELS, "larger JPEGs are downscaled while decoding")
    allow_origin: tuple[str, ...] = opt(
        (), "web origins whose pages may POST here (CORS), e.g. https://app.example; * for any", none="none"
    )
    allowed_host: tuple[str, ...] = opt(
        (), "Host header names to accept besides loopback ones (any, off loopback)", none="loopback names only"
    )

    def __post_init__(self) -> None:
        at_least(self, 1, "max_bytes", "max_faces", "max_concurrent")
        at_least(self, 0, "max_queue")
        positive(self, "max_megapixels", "decode_megapixels", "request_timeout")
        fraction(self, "threshold")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port: must be in 0..65535, got {self.port}")


def is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_port_free(host: str, port: int) -> None:
    """uvicorn reports a busy port only after start-up, as a log line with exit code 1: say it first, clearly."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise OSError(f"--host {host}: cannot resolve it ({exc.strerror})") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise OSError(
                f"--port {port}: cannot listen on {host}:{port} ({exc.strerror}); "
                f"is another service running there? pick another --port"
            ) from None


def allowed_hosts(bind: str, extra: Sequence[str]) -> list[str] | None:
    """Host headers to accept: on loopback only loopback names (a web page cannot reach the service through
    DNS rebinding), plus `extra`; off loopback any, unless `extra` names them."""
    if is_loopback(bind):
        return [*LOOPBACK_HOSTS, *extra]
    return list(extra) or None


def serve(cfg: ServeConfig) -> None:
    """Load the model once, then serve until interrupted."""
    import uvicorn

    if not is_loopback(cfg.host):  # e.g. 0.0.0.0 inside a container: allowed, but say what it means
        log.warning("--host %s: reachable from other machines, and the service has no authentication", cfg.host)
    check_port_free(cfg.host, cfg.port)  # before spending seconds on loading the model
    predictor = Predictor(cfg.model, cfg.threshold, cfg.max_faces, cfg.detector)
    log.info("warming up (one detection and one model call) before serving")
    app = create_app(
        predictor,
        cfg.max_bytes,
        cfg.max_megapixels,
        cfg.max_concurrent,
        cfg.decode_megapixels,
        cfg.allow_origin,
        allowed_hosts(cfg.host, cfg.allowed_host),
        max_queue=cfg.max_queue,
        request_timeout=cfg.request_timeout,
    )
    log.info("serving %s on http://%s:%d (OpenAPI page: /docs)", predictor.model_path, cfg.host, cfg.port)
    # log_config=None: uvicorn's lines (start-up, one per request) reach the project's handler and format
    # (`celeba.runtime.setup_logging`) instead of uvicorn's own; log_level sets its loggers to INFO.
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="info", log_config=None)

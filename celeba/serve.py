"""`poetry run serve`: the model over HTTP (FastAPI + uvicorn), loaded once per process.

POST /predict (multipart upload, field `file`) -> faces with boxes, alignment, warnings and probabilities;
GET /health; the OpenAPI page is at /docs. Bad uploads get a 4xx with a message that says why;
a photo without a face is a 200 with an empty `faces` list.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Query, Request, UploadFile  # module level: FastAPI resolves annotations
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from celeba.config import DEFAULT_MODEL, opt
from celeba.faces import Detector
from celeba.predict import MAX_BYTES, MAX_MEGAPIXELS, ImageError, ImageTooLarge, Predictor, decode_photo

log = logging.getLogger(__name__)
MULTIPART_OVERHEAD = 64 * 1024  # headers and boundaries around the file in a multipart body
SWAGGER_ASSETS = "/static/swagger"  # Swagger UI's JS and CSS, served from the fastapi-swagger package: /docs works offline


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
        None, description="left_eye, right_eye, nose, mouth as [x, y] photo pixels (null: Haar fallback)")
    roll: float | None = Field(None, description="eye-line angle in the photo, degrees")
    partial_face: bool = Field(False, description="the CelebA window ran past the photo edge; the border was reflected")
    warnings: list[str] = Field(default_factory=list,
                                description="where the face is outside the training distribution (docs/faces.md)")
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


class ErrorBody(BaseModel):
    detail: str = Field(description="what was wrong with the upload, naming it, e.g. "
                                    "'x.jpg: not a decodable image (corrupt JPEG data)'")


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "empty upload"},
    413: {"model": ErrorBody, "description": "upload over the byte limit, or image over the megapixel limit"},
    415: {"model": ErrorBody, "description": "not an image, or an image that cannot be decoded"},
    422: {"description": "no `file` field in the multipart form, or a bad query parameter"},
}


def add_offline_docs(app: FastAPI) -> None:
    """FastAPI's self-hosting recipe: /docs with Swagger UI's assets from a package, not from a CDN."""
    from importlib.resources import files

    app.mount(SWAGGER_ASSETS, StaticFiles(directory=str(files("fastapi_swagger") / "resources")), name="swagger")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=app.openapi_url or "/openapi.json", title=f"{app.title} - API",
                                   swagger_js_url=f"{SWAGGER_ASSETS}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{SWAGGER_ASSETS}/swagger-ui.css",
                                   swagger_favicon_url=f"{SWAGGER_ASSETS}/favicon-32x32.png")


def create_app(predictor: Predictor | Path, max_bytes: int = MAX_BYTES, max_megapixels: float = MAX_MEGAPIXELS):
    """The FastAPI app around one loaded model (a Predictor, or a model path to load)."""
    if not isinstance(predictor, Predictor):
        predictor = Predictor(Path(predictor))
    app = FastAPI(title="CelebA attributes", docs_url=None, redoc_url=None,
                  description=f"Probabilities of {', '.join(predictor.labels)} for every face in a photo.")
    add_offline_docs(app)

    @app.middleware("http")
    async def refuse_large_bodies(request: Request, call_next):
        """Say 413 from the Content-Length header, before the multipart parser spools the whole upload."""
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > max_bytes + MULTIPART_OVERHEAD:
            return JSONResponse({"detail": f"upload of {int(length) / 1e6:.1f} MB is over the "
                                           f"{max_bytes / 1e6:.1f} MB limit"}, status_code=413)
        return await call_next(request)

    @app.get("/health")
    def health() -> Health:
        return Health(**{"status": "ok", "model": predictor.model_path.name, "labels": list(predictor.labels),
                "image_size": predictor.image_size, "max_bytes": max_bytes, "max_megapixels": max_megapixels})

    # A plain `def`: FastAPI runs it in its thread pool, so decoding and inference never block the event loop.
    @app.post("/predict", responses=ERRORS)
    def predict(file: UploadFile,
                detect: bool = Query(True, description="false: the image already is a CelebA-style aligned crop")
                ) -> Prediction:
        name = file.filename or "upload"
        data = file.file.read(max_bytes + 1)  # never read more than the limit allows
        try:
            rgb = decode_photo(data, name, max_bytes, max_megapixels)
        except ImageTooLarge as exc:
            raise HTTPException(413, str(exc)) from None
        except ImageError as exc:
            raise HTTPException(400 if not data else 415, str(exc)) from None
        faces = predictor.score_photos([rgb], detect)[0]
        return Prediction(**predictor.result(name, rgb, faces), labels=list(predictor.labels))

    return app


@dataclass
class ServeConfig:
    """Serve a trained model over HTTP: POST /predict, GET /health, OpenAPI page at /docs."""

    model: Path = opt(DEFAULT_MODEL, ".keras model (run card beside it) or an exported .tflite/.onnx (card beside it)")
    host: str = opt("127.0.0.1", "interface to listen on; 0.0.0.0 (e.g. in a container) exposes the unauthenticated "
                                 "service to other machines")
    port: int = opt(8000, "TCP port")
    max_bytes: int = opt(MAX_BYTES, "larger uploads get 413")
    max_megapixels: float = opt(MAX_MEGAPIXELS, "larger images get 413 (checked before decoding)")
    threshold: float = opt(0.5, "a label is listed for a face when its probability is at least this")
    max_faces: int = opt(10, "faces per image, largest first")
    detector: Detector = opt("blazeface", "blazeface: landmarks + CelebA alignment (Haar as fallback); "
                                          "haar: framing only")


def is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(cfg: ServeConfig) -> None:
    """Load the model once, then serve until interrupted."""
    import uvicorn

    if not is_loopback(cfg.host):  # e.g. 0.0.0.0 inside a container: allowed, but say what it means
        log.warning("--host %s: reachable from other machines, and the service has no authentication", cfg.host)
    predictor = Predictor(cfg.model, cfg.threshold, cfg.max_faces, cfg.detector)
    app = create_app(predictor, cfg.max_bytes, cfg.max_megapixels)
    log.info("serving %s on http://%s:%d (OpenAPI page: /docs)", predictor.model_path, cfg.host, cfg.port)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="info")

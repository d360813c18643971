"""`poetry run serve`: the model over HTTP (FastAPI + uvicorn), loaded once per process.

POST /predict (multipart upload, field `file`) -> faces with boxes and probabilities;
GET /health; the OpenAPI page is at /docs. Bad uploads get a 4xx with a message that says why;
a photo without a face is a 200 with an empty `faces` list.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from fastapi import FastAPI, HTTPException, Query, Request, UploadFile  # module level: FastAPI resolves annotations
from fastapi.responses import JSONResponse

from celeba.predict import MAX_BYTES, MAX_MEGAPIXELS, ImageError, ImageTooLarge, Predictor, decode_photo

log = logging.getLogger(__name__)
MULTIPART_OVERHEAD = 64 * 1024  # headers and boundaries around the file in a multipart body


def create_app(predictor: Predictor | Path, max_bytes: int = MAX_BYTES, max_megapixels: float = MAX_MEGAPIXELS):
    """The FastAPI app around one loaded model (a Predictor, or a model path to load)."""
    if not isinstance(predictor, Predictor):
        predictor = Predictor(Path(predictor))
    app = FastAPI(title="CelebA attributes",
                  description=f"Probabilities of {', '.join(predictor.labels)} for every face in a photo.")

    @app.middleware("http")
    async def refuse_large_bodies(request: Request, call_next):
        """Say 413 from the Content-Length header, before the multipart parser spools the whole upload."""
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > max_bytes + MULTIPART_OVERHEAD:
            return JSONResponse({"detail": f"upload of {int(length) / 1e6:.1f} MB is over the "
                                           f"{max_bytes / 1e6:.1f} MB limit"}, status_code=413)
        return await call_next(request)

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "model": predictor.model_path.name, "labels": list(predictor.labels),
                "image_size": predictor.image_size, "max_bytes": max_bytes, "max_megapixels": max_megapixels}

    # A plain `def`: FastAPI runs it in its thread pool, so decoding and inference never block the event loop.
    @app.post("/predict")
    def predict(file: UploadFile,
                detect: bool = Query(True, description="false: the image already is a CelebA-style aligned crop")
                ) -> dict[str, Any]:
        name = file.filename or "upload"
        data = file.file.read(max_bytes + 1)  # never read more than the limit allows
        try:
            rgb = decode_photo(data, name, max_bytes, max_megapixels)
        except ImageTooLarge as exc:
            raise HTTPException(413, str(exc)) from None
        except ImageError as exc:
            raise HTTPException(400 if not data else 415, str(exc)) from None
        faces = predictor.predict([rgb], detect)[0]
        return predictor.result(name, rgb, faces) | {"labels": list(predictor.labels)}

    return app


@dataclass
class ServeConfig:
    """Serve a trained model over HTTP: POST /predict, GET /health, OpenAPI page at /docs."""

    model: Path = Path("models/mobilenetv2-bce.keras")  # .keras (run card beside it) or exported .tflite/.onnx
    host: str = "127.0.0.1"  # loopback by default; 0.0.0.0 (e.g. in a container) exposes it, unauthenticated
    port: int = 8000
    max_bytes: int = MAX_BYTES  # larger uploads get 413
    max_megapixels: float = MAX_MEGAPIXELS  # larger images get 413 (checked before decoding)
    threshold: float = 0.5
    max_faces: int = 10


def is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def main(argv: Sequence[str] | None = None) -> None:
    import uvicorn

    from celeba.cli import _setup, run_cli
    from celeba.config import parse_config

    cfg = parse_config(ServeConfig, argv, ServeConfig.__doc__)
    _setup()
    if not is_loopback(cfg.host):  # e.g. 0.0.0.0 inside a container: allowed, but say what it means
        log.warning("--host %s: reachable from other machines, and the service has no authentication", cfg.host)

    def job() -> None:
        predictor = Predictor(cfg.model, cfg.threshold, cfg.max_faces)
        app = create_app(predictor, cfg.max_bytes, cfg.max_megapixels)
        log.info("serving %s on http://%s:%d (OpenAPI page: /docs)", cfg.model, cfg.host, cfg.port)
        uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="info")

    run_cli(job)

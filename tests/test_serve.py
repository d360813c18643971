"""The service over a real socket on 127.0.0.1: uvicorn in a thread, requests as the client."""

import io

import pytest
import requests
from conftest import loopback_server
from PIL import Image

from celeba.predict import Predictor
from celeba.serve import create_app, is_loopback

TIMEOUT = 60  # seconds per request: generous for a shared 2-core machine, still bounded


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def server(tiny_model):
    with loopback_server(create_app(Predictor(tiny_model), max_bytes=300_000, max_megapixels=1.0)) as url:
        yield url


def test_health_and_openapi_schema(server):
    health = requests.get(f"{server}/health", timeout=TIMEOUT).json()
    assert health["status"] == "ok" and health["labels"] == ["Male", "Young"] and health["max_bytes"] == 300_000
    spec = requests.get(f"{server}/openapi.json", timeout=TIMEOUT).json()
    post = spec["paths"]["/predict"]["post"]
    assert {"200", "400", "413", "415", "422"} <= set(post["responses"])  # every answer a client must handle
    assert post["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Prediction"
    }
    assert post["responses"]["415"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorBody"
    }
    assert {"Prediction", "FaceResult", "FaceBox", "Health", "ErrorBody"} <= set(spec["components"]["schemas"])


def test_docs_page_works_offline(server):
    """/docs and the Swagger UI assets it loads come from this server, not from a CDN."""
    import re

    page = requests.get(f"{server}/docs", timeout=TIMEOUT)
    assert page.status_code == 200
    assets = re.findall(r"""(?:src|href)=['"]([^'"]+\.(?:js|css))['"]""", page.text)
    assert len(assets) == 2 and all(url.startswith("/static/") for url in assets), assets
    assert "cdn" not in page.text.lower()
    for url in assets:
        asset = requests.get(f"{server}{url}", timeout=TIMEOUT)
        assert asset.status_code == 200 and len(asset.content) > 100_000, url  # the real bundle, not a stub
    assert (
        b"SwaggerUIBundle"
        in requests.get(f"{server}{assets[0] if assets[0].endswith('.js') else assets[1]}", timeout=TIMEOUT).content
    )


def test_corrupt_jpeg_upload_says_so_in_plain_words(server, face_jpeg):
    r = requests.post(
        f"{server}/predict", files={"file": ("cut.jpg", face_jpeg[: len(face_jpeg) // 3])}, timeout=TIMEOUT
    )
    assert r.status_code == 415 and r.json()["detail"] == "cut.jpg: not a decodable image (corrupt JPEG data)"


def test_predict_finds_the_face_in_a_celeba_photo(server, face_jpeg):
    r = requests.post(f"{server}/predict", files={"file": ("me.jpg", face_jpeg, "image/jpeg")}, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["file"] == "me.jpg" and (body["width"], body["height"]) == (178, 218)
    assert len(body["faces"]) == 1
    face = body["faces"][0]
    assert set(face["probabilities"]) == {"Male", "Young"}
    assert all(0 <= p <= 1 for p in face["probabilities"].values())
    assert 40 < face["box"]["w"] < 160 and face["labels"] == [k for k, p in face["probabilities"].items() if p >= 0.5]


def test_no_detect_scores_the_whole_image_like_the_cli(server, face_jpeg, tiny_model):
    r = requests.post(
        f"{server}/predict",
        params={"detect": "false"},
        files={"file": ("me.jpg", face_jpeg, "image/jpeg")},
        timeout=TIMEOUT,
    )
    faces = r.json()["faces"]
    assert faces[0]["box"] == {"x": 0, "y": 0, "w": 178, "h": 218}
    from celeba.predict import decode_photo

    local = Predictor(tiny_model).score_photos([decode_photo(face_jpeg, "me.jpg")], detect=False)[0][0]
    assert faces[0]["probabilities"] == local.probabilities


def test_photo_without_a_face_is_200_with_an_empty_list(server):
    blank = _png(Image.new("RGB", (320, 240), (128, 128, 128)))
    r = requests.post(f"{server}/predict", files={"file": ("wall.png", blank, "image/png")}, timeout=TIMEOUT)
    assert r.status_code == 200 and r.json()["faces"] == []


@pytest.mark.parametrize(
    "name, data, status, message",
    [
        ("empty.jpg", b"", 400, "empty.jpg: empty file"),
        ("notes.jpg", b"just some text, not a picture", 415, "notes.jpg: not an image"),
        ("big.jpg", b"\xff\xd8" + bytes(400_000), 413, "upload of 0.4 MB is over the 0.3 MB limit"),  # header
        ("bigger.jpg", b"\xff\xd8" + bytes(310_000), 413, "bigger.jpg: 0.3 MB is over the 0.3 MB limit"),  # by size
        ("wide.png", _png(Image.new("L", (1600, 1000))), 413, "1.6 megapixels is over the 1 megapixel limit"),
    ],
)
def test_bad_uploads_get_4xx_with_a_clear_message(server, name, data, status, message):
    r = requests.post(f"{server}/predict", files={"file": (name, data)}, timeout=TIMEOUT)
    assert r.status_code == status
    assert message in r.json()["detail"]


def test_missing_upload_field_is_422(server):
    r = requests.post(f"{server}/predict", timeout=TIMEOUT)
    assert r.status_code == 422


def test_grayscale_and_rgba_uploads_work(server, face_jpeg):
    rgb = Image.open(io.BytesIO(face_jpeg))
    for image in (rgb.convert("L"), rgb.convert("RGBA")):
        r = requests.post(f"{server}/predict", files={"file": ("x.png", _png(image))}, timeout=TIMEOUT)
        assert r.status_code == 200 and len(r.json()["faces"]) == 1


def test_concurrent_requests_all_succeed(server, face_jpeg):
    from concurrent.futures import ThreadPoolExecutor

    def post(_):
        return requests.post(f"{server}/predict", files={"file": ("me.jpg", face_jpeg)}, timeout=TIMEOUT)

    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(post, range(8)))
    probs = [r.json()["faces"][0]["probabilities"] for r in responses]
    assert all(r.status_code == 200 for r in responses) and all(p == probs[0] for p in probs)


def test_loopback_hosts_are_recognised():
    assert all(is_loopback(host) for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"))
    assert not any(is_loopback(host) for host in ("0.0.0.0", "192.168.1.10", "example.com", "::"))


def test_service_returns_alignment_fields_and_flags_a_tight_crop(server, face_jpeg):
    import numpy as np

    from celeba.framings import tight

    upright = np.asarray(Image.open(io.BytesIO(face_jpeg)).convert("RGB"))
    r = requests.post(
        f"{server}/predict",
        files={"file": ("id.png", _png(Image.fromarray(tight(upright, 0.9))), "image/png")},
        timeout=TIMEOUT,
    )
    assert r.status_code == 200, r.text
    face = r.json()["faces"][0]
    assert face["method"] == "blazeface+align" and face["partial_face"] is False  # complete, though tight
    assert set(face["landmarks"]) == {"left_eye", "right_eye", "nose", "mouth"} and abs(face["roll"]) < 10
    assert any(w.startswith("tight_crop") for w in face["warnings"])


def test_the_command_logs_in_one_format(tiny_model):
    """`celeba serve` in its own process: uvicorn's start-up and request lines share the project's log format
    (`HH:MM:SS LEVEL message`), not uvicorn's `INFO:     ...` beside it."""
    import os
    import re
    import signal
    import socket
    import subprocess
    import sys
    import time

    from celeba.config import REPO_ROOT

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    command = [sys.executable, "-m", "celeba", "serve", "--model", str(tiny_model), "--port", str(port)]
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while True:
            assert process.poll() is None and time.monotonic() < deadline, "the service did not start"
            try:
                if requests.get(f"http://127.0.0.1:{port}/health", timeout=TIMEOUT).ok:
                    break
            except requests.ConnectionError:
                time.sleep(0.5)
    finally:
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    lines = err.strip().splitlines()
    assert any("Uvicorn running on" in line for line in lines) and any("GET /health" in line for line in lines), err
    assert all(re.match(r"\d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR|CRITICAL) ", line) for line in lines), err

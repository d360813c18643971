"""The service's limits over a real socket on 127.0.0.1: streamed bytes, memory, browsers, Host headers, warm-up."""

from __future__ import annotations

import io
import select
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import keras
import numpy as np
import pytest
import requests
from conftest import loopback_server
from PIL import Image

import celeba.serve as serve
from celeba.predict import Predictor, decode_photo_bounded
from celeba.serve import LOOPBACK_HOSTS, create_app

TIMEOUT = 60
LIMIT = 300_000


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    """A small stand-in model (any function of the pixels will do): the limits do not depend on its quality."""
    from celeba.checkpoint import save_atomic

    path = tmp_path_factory.mktemp("serve") / "small.keras"
    model = keras.Sequential(
        [keras.Input((32, 32, 3)), keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2, activation="sigmoid")]
    )
    save_atomic(model, path, labels=["Male", "Young"])
    return path


@pytest.fixture(scope="module")
def server(model_path):
    app = create_app(
        Predictor(model_path),
        max_bytes=LIMIT,
        max_megapixels=1.0,
        max_concurrent=1,
        allow_origins=("https://ok.example",),
        allowed_hosts=LOOPBACK_HOSTS,
    )
    with loopback_server(app) as url:
        yield url


def test_a_chunked_upload_is_cut_off_at_the_limit(server):
    """No Content-Length: the server counts the streamed bytes and answers 413 long before the end."""
    port = int(server.rsplit(":", 1)[1])
    total, chunk = 30_000_000, b"\0" * 65536
    sent, response = 0, b""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(
            b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Type: multipart/form-data; boundary=XX\r\n\r\n"
        )
        head = b'--XX\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n\r\n'
        sock.sendall(b"%x\r\n%s\r\n" % (len(head), head))
        try:
            while sent < total:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
                if select.select([sock], [], [], 0)[0]:
                    break
        except (BrokenPipeError, ConnectionResetError):
            pass
        sock.settimeout(TIMEOUT)
        try:
            while b"\r\n\r\n" not in response or not response.rstrip().endswith(b"}"):
                data = sock.recv(65536)
                if not data:
                    break
                response += data
        except ConnectionResetError:
            pass
    assert response.startswith(b"HTTP/1.1 413"), response[:300]
    assert b"upload is over the 0.3 MB limit" in response
    assert sent < total / 3, f"the server let {sent / 1e6:.1f} MB in before refusing"


def test_content_length_over_the_limit_is_refused_before_reading(server):
    r = requests.post(f"{server}/predict", files={"file": ("big.jpg", b"\xff\xd8" + bytes(400_000))}, timeout=TIMEOUT)
    assert r.status_code == 413 and "upload of 0.4 MB is over the 0.3 MB limit" in r.json()["detail"]


def test_decodes_are_bounded_to_max_concurrent(server, face_jpeg, monkeypatch):
    active, peak, lock = [0], [0], threading.Lock()
    real = serve.decode_photo_bounded

    def counting(*args, **kwargs):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        try:
            time.sleep(0.3)
            return real(*args, **kwargs)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(serve, "decode_photo_bounded", counting)

    def post(_):
        return requests.post(f"{server}/predict", files={"file": ("me.jpg", face_jpeg)}, timeout=TIMEOUT)

    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(post, range(4)))
    assert all(r.status_code == 200 for r in responses)
    assert peak[0] == 1  # max_concurrent=1: the four requests decoded one after another


def test_large_jpegs_are_downscaled_while_decoding_and_boxes_map_back(face_jpeg):
    photo = Image.open(io.BytesIO(face_jpeg)).resize((178 * 8, 218 * 8))  # 2.5 megapixels
    buf = io.BytesIO()
    photo.save(buf, "JPEG", quality=90)
    rgb, scale = decode_photo_bounded(buf.getvalue(), "big.jpg", max_megapixels=40, decode_megapixels=0.15)
    assert rgb.shape[:2] == (218 * 2, 178 * 2) and scale == 4.0  # decoded at 1/4: never 2.5 MP in memory
    full, same = decode_photo_bounded(buf.getvalue(), "big.jpg", max_megapixels=40)
    assert full.shape[:2] == (218 * 8, 178 * 8) and same == 1.0

    from celeba.faces import Box, FaceCrop
    from celeba.predict import Face

    bare = Predictor.__new__(Predictor)
    bare.threshold = 0.5
    landmarks = np.array([[12.0, 25.0], [30.0, 25.5], [21.0, 35.0], [21.5, 45.0]])
    found = FaceCrop(Box(10, 20, 30, 40), np.zeros((218, 178, 3), np.uint8), "blazeface+align", 0.9, landmarks)
    faces = [Face(Box(10, 20, 30, 40), {}), Face(found.box, {}, found)]
    result = bare.result("big.jpg", rgb, faces, scale)
    assert (result["width"], result["height"]) == (178 * 8, 218 * 8)  # the photo's size, not the decoded one
    for face in result["faces"]:
        assert face["box"] == {"x": 40, "y": 80, "w": 120, "h": 160}
    assert result["faces"][1]["landmarks"] == {
        "left_eye": [48.0, 100.0],
        "right_eye": [120.0, 102.0],
        "nose": [84.0, 140.0],
        "mouth": [86.0, 180.0],
    }  # the photo's pixels, like the box


def test_cross_origin_browser_posts_are_refused_unless_allowed(server, face_jpeg):
    files = {"file": ("me.jpg", face_jpeg)}
    evil = requests.post(f"{server}/predict", files=files, headers={"Origin": "https://evil.example"}, timeout=TIMEOUT)
    assert evil.status_code == 403
    assert "cross-origin request from https://evil.example refused" in evil.json()["detail"]
    ok = requests.post(f"{server}/predict", files=files, headers={"Origin": "https://ok.example"}, timeout=TIMEOUT)
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "https://ok.example"
    same = requests.post(f"{server}/predict", files=files, headers={"Origin": server}, timeout=TIMEOUT)
    assert same.status_code == 200  # the service's own page (e.g. /docs) may post
    assert requests.post(f"{server}/predict", files=files, timeout=TIMEOUT).status_code == 200  # curl, scripts


def test_other_host_headers_are_refused_on_loopback(server):
    """DNS rebinding: a web page whose name resolves to 127.0.0.1 sends its own name as the Host."""
    assert requests.get(f"{server}/health", headers={"Host": "evil.example"}, timeout=TIMEOUT).status_code == 400
    assert requests.get(f"{server}/health", timeout=TIMEOUT).status_code == 200
    assert serve.allowed_hosts("127.0.0.1", ["my.box"]) == [*LOOPBACK_HOSTS, "my.box"]
    assert serve.allowed_hosts("0.0.0.0", []) is None


def test_a_thin_image_is_not_a_server_error(server):
    buf = io.BytesIO()
    Image.new("RGB", (1, 30000), (90, 90, 90)).save(buf, "PNG")
    r = requests.post(f"{server}/predict", files={"file": ("thin.png", buf.getvalue())}, timeout=TIMEOUT)
    assert r.status_code == 200 and r.json()["faces"] == []


def test_the_model_is_warmed_up_before_the_app_exists(model_path):
    predictor = Predictor(model_path)
    calls = []
    infer = predictor.infer
    predictor.infer = lambda batch: calls.append(len(batch)) or infer(batch)
    create_app(predictor)
    assert calls, "no model call before the first request"
    assert np.all(np.isfinite(infer(np.zeros((1, 32, 32, 3), np.float32))))


# --------------------------------------------------------------------------- a bounded queue, a time limit


@pytest.fixture
def slow_decodes(monkeypatch):
    """Every decode takes 2 s: the slots stay busy long enough to fill the queue."""
    real = serve.decode_photo_bounded

    def slow(*args, **kwargs):
        time.sleep(2)
        return real(*args, **kwargs)

    monkeypatch.setattr(serve, "decode_photo_bounded", slow)


def _timed_post(url: str, photo: bytes) -> tuple[requests.Response, float]:
    started = time.monotonic()
    response = requests.post(f"{url}/predict", files={"file": ("me.jpg", photo)}, timeout=TIMEOUT)
    return response, time.monotonic() - started


def test_beyond_the_queue_requests_get_503_with_retry_after_at_once(model_path, face_jpeg, slow_decodes):
    """16 uploads against 2 slots used to all wait (the last 49 s), without 429/503 or a time limit."""
    app = create_app(Predictor(model_path), max_concurrent=1, max_queue=1, request_timeout=30, warm_up=False)
    with loopback_server(app) as url, ThreadPoolExecutor(6) as pool:
        assert requests.get(f"{url}/health", timeout=TIMEOUT).json()["max_queue"] == 1
        results = list(pool.map(lambda _: _timed_post(url, face_jpeg), range(6)))
    ok = [seconds for r, seconds in results if r.status_code == 200]
    busy = [(r, seconds) for r, seconds in results if r.status_code == 503]
    assert len(ok) == 2 and len(busy) == 4, [r.status_code for r, _ in results]  # one scored, one waited
    for response, seconds in busy:
        assert response.json()["detail"] == (
            "busy: all 1 slot(s) are scoring photos and the queue of 1 is full (--max-queue); retry later"
        )
        assert int(response.headers["retry-after"]) >= 1
        assert seconds < 1.5  # at once, not after the 2 s decodes
    assert max(ok) < 6  # the admitted two: 2 s each, one after the other


def test_a_request_waiting_past_the_time_limit_gets_503(model_path, face_jpeg, slow_decodes):
    app = create_app(Predictor(model_path), max_concurrent=1, max_queue=4, request_timeout=0.5, warm_up=False)
    with loopback_server(app) as url, ThreadPoolExecutor(2) as pool:
        first = pool.submit(_timed_post, url, face_jpeg)
        time.sleep(0.3)  # the first holds the slot for 2 s
        second, seconds = _timed_post(url, face_jpeg)
        assert first.result()[0].status_code == 200
    assert second.status_code == 503 and seconds < 1.8
    assert second.json()["detail"] == "busy: no free slot within 0.5 s (--request-timeout); retry later"
    assert int(second.headers["retry-after"]) >= 1


def test_queue_and_time_limit_flags_are_checked():
    from celeba.config import ConfigError
    from celeba.serve import ServeConfig

    with pytest.raises(ConfigError, match="--max-queue: must be at least 0, got -1"):
        ServeConfig(max_queue=-1)
    with pytest.raises(ConfigError, match="--request-timeout: must be a finite number > 0, got 0"):
        ServeConfig(request_timeout=0)

"""Load test of `serve` with near-limit images: peak RSS next to throughput and p95 latency.

    nice -n 10 python -m benchmarks.serve_load --requests 8 --clients 8 --max-concurrent 2 8 \
        --model models/celeba8k-bce.keras

For each `--max-concurrent` value a fresh `serve` process (real uvicorn on 127.0.0.1) gets `--requests` uploads
from `--clients` concurrent clients, alternating a PNG and a JPEG just under the 40-megapixel limit. The server's
RSS is sampled every 50 ms from /proc: before the load, its peak, and after the load. Writes JSON
(default benchmarks/results/serve_load.json).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from celeba.config import DEFAULT_MODEL

REPO = Path(__file__).resolve().parent.parent


def near_limit_images(megapixels: float = 39.9) -> dict[str, bytes]:
    """A PNG (a gradient: tiny file, huge decode) and a JPEG of `megapixels`, each with a face pasted in."""
    from PIL import Image

    from celeba.data import SAMPLE_DIR, image_dir

    side = int((megapixels * 1e6) ** 0.5)
    ramp = np.linspace(60, 200, side, dtype=np.uint8)
    image = Image.fromarray(np.broadcast_to(ramp[None, :, None], (side, side, 3)).copy())
    face = Image.open(sorted(image_dir(SAMPLE_DIR).glob("*.jpg"))[1]).resize((178 * 6, 218 * 6))
    image.paste(face, (side // 3, side // 3))
    out = {}
    for fmt in ("PNG", "JPEG"):
        buf = io.BytesIO()
        image.save(buf, fmt, **({"quality": 85} if fmt == "JPEG" else {"compress_level": 9}))
        out[fmt.lower()] = buf.getvalue()
    return out


def wait_healthy(server: subprocess.Popen, url: str, timeout: float = 600) -> None:
    """Block until the served /health answers 200; a server that exits or never answers is an error."""
    import requests

    deadline = time.monotonic() + timeout
    while True:
        try:
            if requests.get(f"{url}/health", timeout=5).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("serve did not start")
        time.sleep(0.5)


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_test(model: Path, max_concurrent: int, images: dict[str, bytes], requests_n: int, clients: int) -> dict:
    import requests

    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2", "TL_DISABLE_ANALYTICS": "true"}
    server = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from celeba.cli import serve_main; serve_main()",
            "--model",
            str(model),
            "--port",
            str(port),
            "--max-concurrent",
            str(max_concurrent),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(server, url)
        idle = rss_mb(server.pid)
        samples, stop = [], threading.Event()

        def sample() -> None:
            while not stop.is_set():
                samples.append(rss_mb(server.pid))
                time.sleep(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        names = list(images)

        def post(i: int) -> tuple[float, int]:
            name = names[i % len(names)]
            start = time.perf_counter()
            r = requests.post(f"{url}/predict", files={"file": (f"big.{name}", images[name])}, timeout=600)
            return time.perf_counter() - start, r.status_code

        started = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            results = list(pool.map(post, range(requests_n)))
        wall = time.perf_counter() - started
        time.sleep(2)  # what the server keeps once the load is over
        stop.set()
        sampler.join()
        after = rss_mb(server.pid)
        latencies = np.array([t for t, _ in results])
        return {
            "max_concurrent": max_concurrent,
            "requests": requests_n,
            "clients": clients,
            "status_codes": sorted({code for _, code in results}),
            "throughput_rps": round(requests_n / wall, 3),
            "p50_s": round(float(np.percentile(latencies, 50)), 2),
            "p95_s": round(float(np.percentile(latencies, 95)), 2),
            "rss_idle_mb": round(idle),
            "rss_peak_mb": round(max(samples)),
            "rss_after_mb": round(after),
        }
    finally:
        server.terminate()
        server.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=REPO / DEFAULT_MODEL)
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--max-concurrent", type=int, nargs="+", default=[2, 8])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "serve_load.json")
    args = parser.parse_args()

    images = near_limit_images()
    print(
        f"images: PNG {len(images['png']) / 1e3:.0f} KB, JPEG {len(images['jpeg']) / 1e6:.1f} MB, 39.9 MP each",
        flush=True,
    )
    runs = []
    for k in args.max_concurrent:
        runs.append(load_test(args.model, k, images, args.requests, args.clients))
        print(json.dumps(runs[-1]), flush=True)
    result = {
        "model": str(args.model.relative_to(REPO) if args.model.is_relative_to(REPO) else args.model),
        "image_bytes": {k: len(v) for k, v in images.items()},
        "runs": runs,
        "load_average_after": os.getloadavg(),
        "cpus": os.cpu_count(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

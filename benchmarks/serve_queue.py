"""Load test of the service's bounded queue: throughput, latency, peak RSS and the share of 503s under overload.

    nice -n 10 python -m benchmarks.serve_queue --max-concurrent 2 --max-queue 4 --levels 1 4 16

One `serve` process (real uvicorn on 127.0.0.1, `--max-concurrent K --max-queue Q --request-timeout T`) gets, for
each level m, m x K concurrent clients that each post `--per-client` photos (a `--megapixels` JPEG with a face
pasted in) one after another. Per level: requests/s (all answers, and 200s only), p50/p95/p99 latency of all
answers and of the 200s, the share of 503s, and the server's peak RSS (sampled every 50 ms from /proc). Writes
JSON (default benchmarks/results/serve_queue.json).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from benchmarks.serve_load import free_port, near_limit_images, rss_mb, wait_healthy
from celeba.config import DEFAULT_MODEL

REPO = Path(__file__).resolve().parent.parent


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50_s": None, "p95_s": None, "p99_s": None}
    return {f"p{q}_s": round(float(np.percentile(values, q)), 2) for q in (50, 95, 99)}


def run_level(url: str, pid: int, photo: bytes, clients: int, per_client: int) -> dict:
    import requests

    samples, stop = [rss_mb(pid)], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append(rss_mb(pid))
            time.sleep(0.05)

    def client(_: int) -> list[tuple[float, int]]:
        out = []
        with requests.Session() as session:
            for _ in range(per_client):
                start = time.perf_counter()
                r = session.post(f"{url}/predict", files={"file": ("photo.jpg", photo)}, timeout=600)
                out.append((time.perf_counter() - start, r.status_code))
        return out

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = [answer for answers in pool.map(client, range(clients)) for answer in answers]
    wall = time.perf_counter() - started
    stop.set()
    sampler.join()
    ok = [t for t, code in results if code == 200]
    codes = [code for _, code in results]
    return {
        "clients": clients,
        "requests": len(results),
        "wall_s": round(wall, 1),
        "answers_per_s": round(len(results) / wall, 2),
        "ok_per_s": round(len(ok) / wall, 2),
        "status_codes": {str(c): codes.count(c) for c in sorted(set(codes))},
        "share_503": round(codes.count(503) / len(codes), 3),
        "all": _percentiles([t for t, _ in results]),
        "ok": _percentiles(ok),
        "rss_peak_mb": round(max(samples)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=REPO / DEFAULT_MODEL)
    parser.add_argument("--max-concurrent", type=int, default=2)
    parser.add_argument("--max-queue", type=int, default=4)
    parser.add_argument("--request-timeout", type=float, default=30.0)
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 4, 16], help="clients per slot")
    parser.add_argument("--per-client", type=int, default=2)
    parser.add_argument("--megapixels", type=float, default=4.0)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "serve_queue.json")
    args = parser.parse_args()

    photo = near_limit_images(args.megapixels)["jpeg"]
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2", "TL_DISABLE_ANALYTICS": "true"}
    server = subprocess.Popen(
        [
            *(sys.executable, "-m", "celeba", "serve", "--model", str(args.model), "--port", str(port)),
            *("--max-concurrent", str(args.max_concurrent), "--max-queue", str(args.max_queue)),
            *("--request-timeout", str(args.request_timeout)),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(server, url)
        idle = rss_mb(server.pid)
        levels = []
        for m in args.levels:
            level = {"level": m, **run_level(url, server.pid, photo, m * args.max_concurrent, args.per_client)}
            levels.append(level)
            print(json.dumps(level), flush=True)
    finally:
        server.terminate()
        server.wait(30)
    result = {
        "model": str(args.model.relative_to(REPO) if args.model.is_relative_to(REPO) else args.model),
        "photo": {"megapixels": args.megapixels, "bytes": len(photo)},
        "max_concurrent": args.max_concurrent,
        "max_queue": args.max_queue,
        "request_timeout_s": args.request_timeout,
        "rss_idle_mb": round(idle),
        "levels": levels,
        "load_average_after": os.getloadavg(),
        "cpus": os.cpu_count(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

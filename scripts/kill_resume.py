"""Kill a training with SIGKILL at random points, resume it each time, and compare with uninterrupted runs.

    nice -n 10 python scripts/kill_resume.py --kills 20 --out benchmarks/results/kill_resume.json

Not part of the test suite (it takes tens of minutes). The reference runs train the same tiny config without
kills, with the killed run's seed and with `--reference-seeds - 1` other seeds: their spread is the noise that the
killed run's validation loss is judged against (a resumed run cannot replay the uninterrupted run's shuffling
and augmentation draws exactly, so an exact match is not expected). A fifth of the kills land in start-up
(imports, data, model, restoring the backup), a fifth in the first epoch of the process, the rest at a uniform
delay over one and a half epochs after the process's first epoch: batches, validation and the epoch-end writes
(checkpoint, history, backup) are hit in proportion to the time each takes.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
TRAIN = [sys.executable, "-c", "from celeba.cli import train_main; train_main()"]


def train_args(args: argparse.Namespace, name: str, seed: int) -> list[str]:
    return [
        "--weights",
        "none",
        "--image-size",
        str(args.image_size),
        "--limit",
        str(args.limit),
        "--batch-size",
        str(args.batch_size),
        "--epochs",
        str(args.epochs),
        "--no-check-images",
        "--seed",
        str(seed),
        "--models-dir",
        str(args.workdir),
        "--name",
        name,
    ]


def env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "TL_DISABLE_ANALYTICS": "true",
        "PYTHONUNBUFFERED": "1",
    }


def outcome(models: Path, name: str) -> dict:
    """Epochs completed and validation losses of a finished run, from its run card and history."""
    card = json.loads((models / f"{name}.json").read_text())
    lines = (models / name / "history.csv").read_text().splitlines()
    header = lines[0].split(",")
    rows = [dict(zip(header, line.split(","))) for line in lines[1:]]
    val = [float(r["val_loss"]) for r in rows]
    return {
        "epochs_trained": card["epochs_trained"],
        "history_epochs": [int(r["epoch"]) for r in rows],
        "final_val_loss": round(val[-1], 4),
        "best_val_loss": round(min(val), 4),
        "val_accuracy": {k: round(v["accuracy"], 4) for k, v in card["validation_metrics"].items()},
    }


def run_to_end(args: argparse.Namespace, name: str, seed: int, resume: bool = False) -> float:
    started = time.monotonic()
    log = open(args.workdir / f"{name}.log", "a")
    done = subprocess.run(
        TRAIN + train_args(args, name, seed) + (["--resume"] if resume else []),
        env=env(),
        stdout=log,
        stderr=log,
        cwd=REPO,
    )
    if done.returncode != 0:
        sys.exit(f"{name}: training failed with exit code {done.returncode}; see {args.workdir / name}.log")
    return time.monotonic() - started


def epoch_seconds(run_dir: Path) -> list[float]:
    """Wall time of every epoch end of a finished run, from its TensorBoard validation events."""
    import tensorflow as tf

    times = []
    for path in sorted((run_dir / "logs" / "validation").glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            if any(v.tag == "epoch_loss" for v in event.summary.value):
                times.append(event.wall_time)
    return sorted(times)


def wait_for(path: Path, text: str, proc: subprocess.Popen, timeout: float) -> bool:
    """Until `text` appears in the log after its current end, or the process exits."""
    start, deadline = path.stat().st_size if path.exists() else 0, time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        with open(path, errors="replace") as f:
            f.seek(start)
            if text in f.read():
                return True
        time.sleep(0.1)
    return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--limit", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill delays")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/kill-resume"))
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--max-minutes",
        type=float,
        default=float("inf"),
        help="stop killing after this long (the run then finishes with --resume)",
    )
    parser.add_argument(
        "--reference-seeds",
        type=int,
        default=5,
        help="uninterrupted runs (seeds 42, 43, ...) whose spread is the noise",
    )
    parser.add_argument(
        "--resume-kills",
        action="store_true",
        help="continue an earlier invocation: its kills are in WORKDIR/kills.jsonl",
    )
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)

    others = [f"reference-seed{seed}" for seed in range(43, 42 + args.reference_seeds)]
    print(f"reference runs (no kills): seed 42, then {len(others)} more seeds beside the kills ...", flush=True)
    reference_s = 0.0 if (args.workdir / "reference.json").is_file() else run_to_end(args, "reference", 42)
    pending = [n for n in others if not (args.workdir / f"{n}.log").exists()]  # not started by an earlier invocation
    noise = threading.Thread(
        target=lambda: [run_to_end(args, n, int(n.removeprefix("reference-seed"))) for n in pending]
    )
    noise.start()
    # Seconds per epoch once the training step is traced: the kills are spread over about one and a half of them.
    epoch_s = float(np.median(np.diff(epoch_seconds(args.workdir / "reference"))))
    print(f"an epoch takes {epoch_s:.1f} s once traced", flush=True)

    name, log_path, record = "killed", args.workdir / "killed.log", args.workdir / "kills.jsonl"
    kills = [json.loads(line) for line in record.read_text().splitlines()] if args.resume_kills else []
    rng = random.Random(args.seed * 1000 + len(kills))  # a continuation draws new points
    stop_at = time.time() + args.max_minutes * 60
    while len(kills) < args.kills and time.time() < stop_at:
        with open(log_path, "a") as log:
            proc = subprocess.Popen(
                TRAIN + train_args(args, name, 42) + (["--resume"] if kills else []),
                env=env(),
                stdout=log,
                stderr=log,
                cwd=REPO,
            )
        draw = rng.random()
        if draw < 0.2:  # during start-up: imports, data, model, restoring the backup
            point, delay = "start-up", rng.uniform(0, 30)
        elif draw < 0.4:  # in this process's first epoch, once its training step is traced
            wait_for(log_path, "/step", proc, 3600)
            point, delay = "first epoch", rng.uniform(0, epoch_s)
        else:  # after this process's first epoch: batches, validation, the epoch-end writes of later epochs
            wait_for(log_path, "val_loss", proc, 3600)
            point, delay = "later epochs", rng.uniform(0, 1.5 * epoch_s)
        time.sleep(delay)
        if proc.poll() is not None:
            if proc.returncode != 0:
                sys.exit(f"killed run failed on its own with exit code {proc.returncode}; see {log_path}")
            print(f"  the run finished before kill {len(kills) + 1}: stopping the kills there", flush=True)
            break
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        backup = args.workdir / name / "backup"
        files = sorted(p.name for p in backup.rglob("*") if p.is_file()) if backup.exists() else []
        history = args.workdir / name / "history.csv"
        rows = max(0, len(history.read_text().splitlines()) - 1) if history.exists() else 0
        kills.append(
            {
                "point": point,
                "delay_s": round(delay, 1),
                "backup_files": files,
                "history_rows": rows,
                "during_backup_write": any(".tmp." in f for f in files),
            }
        )
        with open(record, "a") as f:
            f.write(json.dumps(kills[-1]) + "\n")
        print(f"  kill {len(kills):2d} ({point}, {delay:5.1f} s): backups {files}, history rows {rows}", flush=True)

    final_s = run_to_end(args, name, 42, resume=True)
    if noise.is_alive():
        noise.join()
    deadline = time.monotonic() + 3600
    while not all((args.workdir / f"{n}.json").is_file() for n in others) and time.monotonic() < deadline:
        time.sleep(5)  # started by an earlier invocation of this script

    with open(log_path, errors="replace") as f:
        recovered = [line.strip() for line in f if "resume:" in line]
    result = {
        "config": {k: str(v) for k, v in vars(args).items()},
        "kills_done": len(kills),
        "kills": kills,
        "kills_during_backup_write": sum(k.get("during_backup_write", False) for k in kills),
        "resume_messages": recovered,
        "reference": outcome(args.workdir, "reference"),
        "reference_other_seeds": {n: outcome(args.workdir, n) for n in others},
        "killed_and_resumed": outcome(args.workdir, name),
        "reference_s": round(reference_s, 1),
        "final_resume_s": round(final_s, 1),
        "load_average": os.getloadavg(),
    }
    ref, killed = result["reference"], result["killed_and_resumed"]
    best = [ref["best_val_loss"], *(o["best_val_loss"] for o in result["reference_other_seeds"].values())]
    mean, sd = float(np.mean(best)), float(np.std(best, ddof=1)) if len(best) > 1 else 0.0
    result["reference_best_val_loss"] = {
        "min": min(best),
        "max": max(best),
        "mean": round(mean, 4),
        "sd": round(sd, 4),
        "runs": len(best),
    }
    result["killed_minus_reference_best_val_loss"] = round(killed["best_val_loss"] - ref["best_val_loss"], 4)
    result["killed_within_2sd_of_references"] = abs(killed["best_val_loss"] - mean) <= 2 * sd
    result["same_epochs"] = killed["epochs_trained"] == ref["epochs_trained"] == args.epochs and killed[
        "history_epochs"
    ] == list(range(args.epochs))
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()

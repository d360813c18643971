"""`prepare` over an earlier prepared folder: killed or out of disk midway, the folder keeps one complete output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from celeba import data

REPO = Path(__file__).resolve().parent.parent


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}


def _prepare_cmd(sample_dir: Path, out: Path, size: int, shard_images: int = 40) -> list[str]:
    return [
        *(sys.executable, "-m", "celeba", "prepare", "--data-dir", str(sample_dir), "--out", str(out)),
        *("--image-size", str(size), "--shard-images", str(shard_images), "--no-check-images"),
    ]


def _prepare(sample_dir: Path, out: Path, size: int, shard_images: int = 40) -> subprocess.CompletedProcess:
    return subprocess.run(
        _prepare_cmd(sample_dir, out, size, shard_images), env=_env(), capture_output=True, text=True, timeout=600
    )


def _contents(folder: Path) -> tuple[int, list[str], int]:
    """What a reader of the folder gets: its image size, the ids of every partition, and every record's size."""
    index = data.load_index(folder)
    size = index.attrs["image_size"]
    records = 0
    for partition in ("train", "validation", "test"):
        rows = data.split(index, partition)
        for x, _ in data.make_dataset(rows, ["Male"], size, 64):  # reads and decodes every record
            assert x.shape[1:] == (size, size, 3)
            records += len(x)
    return size, list(index["image_id"]), records


def _our_files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def _state(folder: Path) -> set[tuple[str, int, int]]:
    """Every file's name, size and modification time (a file rewritten in place changes)."""
    states = set()
    for p in folder.iterdir():
        try:
            stat = p.stat()
        except FileNotFoundError:  # renamed away while listed
            continue
        states.add((p.name, stat.st_size, stat.st_mtime_ns))
    return states


@pytest.fixture
def old_output(tmp_path, sample_dir) -> Path:
    """A complete earlier output: the sample at 32 px."""
    out = tmp_path / "prepared"
    run = _prepare(sample_dir, out, 32)
    assert run.returncode == 0, run.stderr[-3000:]
    return out


@pytest.mark.slow
def test_prepare_killed_midway_keeps_the_earlier_output_then_replaces_it(old_output, sample_dir, tmp_path):
    before = _contents(old_output)
    old_files, old_state = _our_files(old_output), _state(old_output)
    assert before[0] == 32 and before[2] == 299
    with open(tmp_path / "log", "w") as log:  # a new output at 48 px (the same shard count), killed midway
        proc = subprocess.Popen(_prepare_cmd(sample_dir, old_output, 48), env=_env(), stdout=log, stderr=log)
        deadline = time.monotonic() + 600
        while len(_state(old_output) - old_state) < 2:  # a new or rewritten shard (or its temporary), and more
            assert proc.poll() is None, (tmp_path / "log").read_text()[-3000:]
            assert time.monotonic() < deadline, "prepare wrote nothing in 600 s"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(60) == -signal.SIGKILL
    assert _contents(old_output) == before  # the reader sees the old output, complete...
    assert _our_files(old_output) > old_files  # ...beside some of the killed run's files

    run = _prepare(sample_dir, old_output, 48)  # the next run completes and clears every earlier file
    assert run.returncode == 0, run.stderr[-3000:]
    after = _contents(old_output)
    assert after[0] == 48 and after[1] == before[1] and after[2] == 299
    summary = json.loads((old_output / "prepared.json").read_text())
    named = {summary["index"], *(n for names in summary["shards"].values() for n in names)}
    assert _our_files(old_output) == named | {"prepared.json"}


def _mount_tmpfs(folder: Path, size: str) -> None:
    folder.mkdir()
    if os.geteuid() != 0:
        pytest.skip("a real full file system needs a tmpfs mount, which needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode().strip()})")


@pytest.mark.slow
def test_prepare_on_a_full_disk_keeps_the_earlier_output_and_names_the_file(tmp_path, sample_dir):
    disk = tmp_path / "disk"
    _mount_tmpfs(disk, "3m")  # the sample at 32 px (0.9 MB) fits; at 64 px (3.7 MB) it does not
    try:
        out = disk / "prepared"
        first = _prepare(sample_dir, out, 32)
        assert first.returncode == 0, first.stderr[-3000:]
        before, old_files = _contents(out), _our_files(out)

        run = _prepare(sample_dir, out, 64)
        assert run.returncode == 2, run.stderr[-3000:]
        errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "Traceback" not in run.stderr, run.stderr[-3000:]
        assert errors[0].startswith(f"error: {out}/.") and ".tfrecord.tmp: no space left on device" in errors[0]
        assert f"the earlier output in {out} is kept" in errors[0]
        assert _our_files(out) == old_files  # none of the failed run's files is left
        assert _contents(out) == before
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_unreferenced_files_of_earlier_runs_are_removed_and_others_kept(tmp_path):
    from celeba.prepare import remove_unreferenced

    names = [
        "train-00000-of-00001.ab12cd34.tfrecord",
        "index.ab12cd34.csv",
        "train-00000-of-00001.tfrecord",  # an older folder's names
        "index.csv",
        ".train-00000-of-00001.0badc0de.tfrecord.tmp",  # a killed run's
        "test-00000-of-00001.0badc0de.tfrecord",
        "notes.txt",  # not ours
    ]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "prepared.json").write_text(
        json.dumps({"index": "index.ab12cd34.csv", "shards": {"train": ["train-00000-of-00001.ab12cd34.tfrecord"]}})
    )
    remove_unreferenced(str(tmp_path))
    assert _our_files(tmp_path) == {names[0], names[1], "notes.txt", "prepared.json"}

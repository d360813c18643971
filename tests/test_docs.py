"""The docs a newcomer follows: flag tables equal to --help, commands that name files which exist, no machine paths."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from celeba.config import REPO_ROOT

DOCS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]


def test_flag_tables_are_generated_from_the_code():
    result = subprocess.run(
        [sys.executable, "scripts/flag_tables.py", "--check"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    text = (REPO_ROOT / "docs" / "training.md").read_text()
    assert "<!-- flags: train -->\n| flag | default | what |" in text  # the tables are there, not just the markers


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_no_machine_specific_paths(path):
    text = path.read_text()
    assert not re.search(r"(?<![\w.])/(work|tmp|home|root|Users)/", text), f"{path.name}: machine-specific path"


def test_readme_commands_name_files_that_exist():
    text = (REPO_ROOT / "README.md").read_text()
    named = set(re.findall(r"(?:data|models|images|scripts)/[\w./-]+\.(?:jpg|png|keras|json|py|sh)", text))
    assert "data/demo/portrait.jpg" in named
    missing = [
        name
        for name in named
        if not (REPO_ROOT / name).is_file() and "my-model" not in name and "smoke-sample" not in name
    ]
    assert not missing, missing


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_figures_exist(path):
    for target in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", path.read_text()):
        assert (path.parent / target).is_file(), f"{path.name}: missing figure {target}"


def test_docs_use_models_that_are_committed_or_made_by_a_documented_command():
    """`--model models/...` in any doc names a committed model, a default export (`models/exports/`, written by
    `celeba export`), a training's own output (`my-model`, `mobilenetv2-<loss>`), or a model of a study whose run card
    (`models/<name>.json`, the record of how it was made) is committed; not a file a user can neither find nor
    remake."""
    made = ("models/exports/", "models/my-model", "models/mobilenetv2-", "models/smoke-sample-")
    named = {
        (path.name, model)
        for path in DOCS
        for model in re.findall(r"--model (models/[\w./-]+\.(?:keras|tflite|onnx))", path.read_text())
    }
    assert ("deployment.md", "models/multisource16k-bce-160b-float32.onnx") in named
    tracked = set(
        subprocess.run(["git", "ls-files", "models"], cwd=REPO_ROOT, capture_output=True, text=True).stdout.split()
    )
    missing = [
        (doc, m)
        for doc, m in named
        if m not in tracked and not m.startswith(made) and str(Path(m).with_suffix(".json")) not in tracked
    ]
    assert not missing, missing


def test_readme_shows_the_designs_own_commands_first():
    """Set up and Train your own: `poetry run test` / `poetry run train` are the commands shown, and the text names
    `celeba ...` as the same."""
    text = (REPO_ROOT / "README.md").read_text()
    for section, command in (("## Set up", "test"), ("## Train your own", "train")):
        body = text.split(section, 1)[1].split("\n## ", 1)[0]
        block = body.split("```bash\n", 1)[1].split("```", 1)[0]
        commands = [line for line in block.splitlines() if line and not line.startswith(" ")]
        assert any(line.startswith(f"poetry run {command} ") for line in commands), block
        assert not any(line.startswith("celeba ") for line in commands), block
        assert f"`celeba {command}" in body or "`celeba <command>" in body, body


def test_a_users_training_leaves_git_status_clean():
    """What `poetry run train` writes (model, run card, run folder, lock) is ignored; committed models stay tracked."""
    made = ["models/smoke-sample-bce.keras", "models/smoke-sample-bce.json", "models/my-model/best.keras"]
    ignored = subprocess.run(["git", "check-ignore", *made], cwd=REPO_ROOT, capture_output=True, text=True)
    assert ignored.stdout.split() == made
    tracked = subprocess.run(["git", "ls-files", "models"], cwd=REPO_ROOT, capture_output=True, text=True).stdout
    assert "models/multisource16k-bce-160b.json" in tracked.split()

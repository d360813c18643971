"""Running the models: probabilities and embeddings of every row, with faces prepared exactly as `predict` does.

Photos go through `celeba.predict.read_photo` and `celeba.predict.face_crops` (the path `predict` and `serve`
use), aligned CelebA crops through the evaluation pipeline. A photo without a usable face keeps its row, with NaN
probabilities and its status ('no face', 'unreadable'): the analysis counts it, it is never dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from celeba.data import CelebADataError
from celeba.population import ALIGNED, NO_FACE, ONE_FACE, SCORED, SEVERAL_FACES, UNREADABLE

if TYPE_CHECKING:
    from celeba.runcard import RunCard

log = logging.getLogger(__name__)

__all__ = ["ALIGNED", "NO_FACE", "ONE_FACE", "SCORED", "SEVERAL_FACES", "UNREADABLE", "ModelRun", "run_models"]


@dataclass
class ModelRun:
    """One model's outputs on the analysed rows, for the analysed labels; NaN rows had no face to score."""

    name: str
    note: str
    model: Any
    image_size: int
    label_index: list[int]  # columns of the analysed labels in the model's outputs
    probs: np.ndarray
    embeddings: np.ndarray


def describe(card: RunCard | None) -> str:
    """How a model was trained, said next to every figure: 'loss bce, balanced sampling, ImageNet init, 96 px,
    6 epochs, 15979 train images' (and the DFR repair, photo folder, Group DRO groups or epoch choice if any), so
    two models of one architecture are told apart."""
    if card is None:
        return "no run card: how it was trained is unknown"
    cfg = card.config
    weights = str(cfg.get("weights", "?"))
    init = (
        "from scratch"
        if weights.lower() == "none"
        else "ImageNet init"
        if "imagenet" in weights.lower()
        else f"init {Path(weights).name}"
    )
    loss = str(cfg.get("loss", "?"))
    if loss == "group-dro":
        loss += f" over {' x '.join(cfg.get('groups', []))}"
    parts = [
        f"loss {loss}",
        f"{cfg.get('sampling', 'natural')} sampling",
        init,
        f"{cfg.get('image_size', '?')} px",
        f"{cfg.get('epochs', '?')} epochs",
        f"{card.data.get('train', '?')} train images",
    ]
    if cfg.get("photos"):
        parts.append(f"with photos of {Path(cfg['photos']).name}")
    if cfg.get("select_by") == "worst_group":
        parts.append("epoch kept by worst-group accuracy")
    repair = card.extra.get("repair")
    if isinstance(repair, dict):
        parts.append(
            f"last layer re-fit for {', '.join(repair.get('labels', []))} by "
            f"{repair.get('method', 'repair')} over {' x '.join(repair.get('groups', []))}"
        )
    return ", ".join(parts)


def unique_names(paths: Sequence[Path]) -> list[str]:
    names: list[str] = []
    for path in paths:
        name, k = Path(path).stem, 2
        while name in names:
            name, k = f"{Path(path).stem}-{k}", k + 1
        names.append(name)
    return names


def _crop(face: Any) -> np.ndarray:
    """The CelebA-framed pixels of one prepared face: a (box, crop) pair, or an object with `.crop` (the issue-13
    face path returns those)."""
    return face.crop if hasattr(face, "crop") else face[1]


def prepare_faces(paths: Sequence[str], detect: bool, max_faces: int = 10) -> tuple[pd.Series, list]:
    """(status of every photo, the CelebA-framed crop of its largest face or None), as `predict` frames them."""
    from tqdm.auto import tqdm

    from celeba.predict import ImageError, face_crops, read_photo

    status: list[str] = []
    crops: list[np.ndarray | None] = []
    for path in tqdm(paths, desc="faces", unit="img", leave=False, disable=len(paths) < 50):
        try:  # a file that cannot be read, or that the face detector refuses, is counted, never dropped
            found = face_crops(read_photo(Path(path)), detect, max_faces, name=str(path))
        except ImageError as exc:
            log.warning("%s", exc)
            status.append(UNREADABLE)
            crops.append(None)
            continue
        status.append(
            ALIGNED if not detect else NO_FACE if not found else ONE_FACE if len(found) == 1 else SEVERAL_FACES
        )
        crops.append(_crop(found[0]) if found else None)
    return pd.Series(status, name="face"), crops


def model_input(path: str, detect: bool, image_size: int) -> np.ndarray:
    """One row's model input again (for Grad-CAM): the aligned image, or the largest face of the photo."""
    from celeba.data import load_image, preprocess_image
    from celeba.predict import face_crops, read_photo

    if not detect:
        return load_image(path, image_size).numpy()
    return preprocess_image(_crop(face_crops(read_photo(Path(path)), True, 1)[0]), image_size).numpy()


def _two_outputs(model: Any) -> Any:
    import keras

    return keras.Model(model.inputs, [model.get_layer("embedding").output, model.output])


def _score_crops(
    both: Any, crops: list, image_size: int, batch_size: int, n_outputs: int
) -> tuple[np.ndarray, np.ndarray]:
    from celeba.data import preprocess_image

    width = both.outputs[0].shape[-1]
    embeddings = np.full((len(crops), width), np.nan, np.float32)
    probs = np.full((len(crops), n_outputs), np.nan, np.float32)
    todo = [i for i, crop in enumerate(crops) if crop is not None]
    for start in range(0, len(todo), batch_size):
        idx = todo[start : start + batch_size]
        batch = np.stack([preprocess_image(crops[i], image_size).numpy() for i in idx])
        emb, p = both([batch], training=False)  # the model's inputs are a list of one
        embeddings[idx], probs[idx] = np.asarray(emb), np.asarray(p)
    return embeddings, probs


def run_models(
    model_paths: Sequence[Path], rows: pd.DataFrame, detect: bool, batch_size: int = 64, max_faces: int = 10
) -> tuple[list[ModelRun], tuple[str, ...], pd.Series]:
    """Load every model; embeddings and probabilities in one pass per model. Labels: those every model outputs and
    the rows know. Returns (runs, labels, face status of every row)."""
    from celeba.model import dataset_probabilities, load_model, model_image_size
    from celeba.runcard import RunCard, card_path

    loaded = [load_model(path) for path in model_paths]
    labels = tuple(
        label
        for label in loaded[0][1]
        if all(label in lab for _, lab in loaded) and label in rows.columns and rows[label].notna().any()
    )
    if not labels:
        raise CelebADataError(
            f"no label is both output by every model {[list(lab) for _, lab in loaded]} and "
            "known for the photos (a column or --derive)"
        )
    status, crops = (
        (pd.Series([ALIGNED] * len(rows), name="face"), [])
        if not detect
        else prepare_faces(list(rows["path"]), detect, max_faces)
    )
    runs = []
    for path, name, (model, model_labels) in zip(model_paths, unique_names(model_paths), loaded):
        card = RunCard.load(path) if card_path(path).is_file() else None
        size = model_image_size(model)
        both = _two_outputs(model)
        log.info("%s: embeddings and probabilities for %d images", name, len(rows))
        if detect:
            embeddings, probs = _score_crops(both, crops, size, batch_size, len(model_labels))
        else:
            embeddings, probs = dataset_probabilities(both, rows, model_labels, size, batch_size)
        index = [model_labels.index(label) for label in labels]
        runs.append(ModelRun(name, f"{name}: {describe(card)}", model, size, index, probs[:, index], embeddings))
    return runs, labels, status.set_axis(rows.index)

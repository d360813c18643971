"""`poetry run predict PATH...`: attribute probabilities for every face in photos (files or folders).

Photo -> checked decode -> faces and landmarks -> 178x218 crops aligned like CelebA, with warnings where a face
is outside the training distribution (`celeba.faces`) -> `celeba.data.preprocess_image` (the training
preprocessing) -> model. `--no-detect` skips detection for images that already are CelebA-style aligned crops.
"""

from __future__ import annotations

import io
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

import numpy as np

from celeba.config import DEFAULT_MODEL, at_least, fraction, opt, positive, resolve_model
from celeba.data import CelebADataError
from celeba.faces import Box, Detector, FaceCrop, find_faces, whole_image

log = logging.getLogger(__name__)

MAX_BYTES = 10_000_000
MAX_MEGAPIXELS = 40.0
TF_FORMATS = {"JPEG", "PNG", "GIF", "BMP"}  # what training's decoder reads: decode these exactly like training
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
# EXIF orientation -> PIL transpose that makes the photo upright (phones store it rotated).
_EXIF_TRANSPOSE = {
    2: "FLIP_LEFT_RIGHT",
    3: "ROTATE_180",
    4: "FLIP_TOP_BOTTOM",
    5: "TRANSPOSE",
    6: "ROTATE_270",
    7: "TRANSVERSE",
    8: "ROTATE_90",
}


class ImageError(CelebADataError):
    """An input image that cannot be used; the message names it and says why."""


class ImageTooLarge(ImageError):
    """Over the configured byte or megapixel limit."""


# --------------------------------------------------------------------------- reading images


def decode_photo(
    data: bytes, name: str, max_bytes: int = MAX_BYTES, max_megapixels: float = MAX_MEGAPIXELS
) -> np.ndarray:
    """Bytes -> upright uint8 RGB, checking size limits before decoding a single pixel.

    JPEG/PNG/GIF/BMP go through TensorFlow's decoder, like the training images (PIL's JPEG decoder
    differs by a few grey levels); other formats PIL reads (WebP, TIFF) through PIL.
    """
    return decode_photo_bounded(data, name, max_bytes, max_megapixels)[0]


def decode_photo_bounded(
    data: bytes,
    name: str,
    max_bytes: int = MAX_BYTES,
    max_megapixels: float = MAX_MEGAPIXELS,
    decode_megapixels: float | None = None,
) -> tuple[np.ndarray, float]:
    """`decode_photo`, plus: a JPEG over `decode_megapixels` is downscaled while decoding (PIL's draft mode
    decodes at 1/2, 1/4 or 1/8 scale), so its full-size pixels never exist in memory.

    Returns (rgb, scale): multiply coordinates in `rgb` by `scale` for the original photo's.
    """
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise ImageError(f"{name}: empty file")
    if len(data) > max_bytes:
        raise ImageTooLarge(f"{name}: {len(data) / 1e6:.1f} MB is over the {max_bytes / 1e6:.1f} MB limit")
    try:
        with Image.open(io.BytesIO(data)) as header:  # reads the header only
            width, height = header.size
            if width * height > max_megapixels * 1e6:
                raise ImageTooLarge(
                    f"{name}: {width}x{height} = {width * height / 1e6:.1f} megapixels is over "
                    f"the {max_megapixels:g} megapixel limit"
                )
            orientation = header.getexif().get(0x0112, 1)
            image_format = header.format
            scale = 1.0
            if image_format == "JPEG" and decode_megapixels and width * height > decode_megapixels * 1e6:
                factor = (width * height / (decode_megapixels * 1e6)) ** 0.5
                header.draft("RGB", (int(width / factor) + 1, int(height / factor) + 1))
                scale = width / header.size[0]
            rgb = None if image_format in TF_FORMATS and scale == 1.0 else np.asarray(header.convert("RGB"))
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"{name}: {exc}") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image (no known image format)") from None
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt files
        raise ImageError(f"{name}: not a decodable image ({exc})") from None
    if rgb is None:
        rgb = _tf_decode(data, name, image_format or "image")  # a TF format here, never None
    if orientation in _EXIF_TRANSPOSE:
        rgb = np.asarray(Image.fromarray(rgb).transpose(getattr(Image.Transpose, _EXIF_TRANSPOSE[orientation])))
    return rgb, scale


def _tf_decode(data: bytes, name: str, image_format: str = "image") -> np.ndarray:
    import tensorflow as tf

    from celeba.data import decode_image

    try:
        return decode_image(data, name).numpy()
    except tf.errors.InvalidArgumentError:  # TensorFlow's message names its graph, not the file or the problem
        raise ImageError(f"{name}: not a decodable image (corrupt {image_format} data)") from None


def read_photo(path: Path, max_bytes: int = MAX_BYTES, max_megapixels: float = MAX_MEGAPIXELS) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: file not found")
    try:
        size = path.stat().st_size
        if size > max_bytes:  # do not even read it
            raise ImageTooLarge(f"{path}: {size / 1e6:.1f} MB is over the {max_bytes / 1e6:.1f} MB limit")
        data = path.read_bytes()
    except OSError as exc:  # permission denied, an I/O error on a bad disk...
        raise ImageError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    return decode_photo(data, str(path), max_bytes, max_megapixels)


def image_files(paths: Sequence[Path]) -> tuple[list[Path], list[str]]:
    """Files as given, folders expanded (recursively, sorted) to the image files inside them; and one message per
    folder without any image file. A path that does not exist is a FileNotFoundError."""
    files, empty = [], []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not found:
                empty.append(f"{path}: no image files ({' '.join(sorted(IMAGE_SUFFIXES))}) in this folder")
            files += found
        elif path.exists():
            files.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    return files, empty


def face_crops(
    rgb: np.ndarray, detect: bool = True, max_faces: int = 10, detector: Detector = "blazeface", name: str = "image"
) -> list[FaceCrop]:
    """The face preparation every photo path shares (predict, serve, the audit): faces aligned like CelebA, largest
    first; `detect=False` takes the image as an already aligned CelebA-style crop. An image OpenCV cannot process
    is an ImageError naming `name`, not a crash of the whole run."""
    import cv2

    if not detect:  # preprocess_image centre-crops it like training
        return [whole_image(rgb)]
    try:
        return find_faces(rgb, max_faces, detector)
    except cv2.error as exc:
        raise ImageError(
            f"{name}: face detection failed on this {rgb.shape[1]}x{rgb.shape[0]} image "
            f"({' '.join(str(exc).split())[:200]})"
        ) from None


# --------------------------------------------------------------------------- the model


def load_predictor_model(
    path: Path, tta: bool = False
) -> tuple[Callable[[np.ndarray], np.ndarray], tuple[str, ...], int]:
    """(batch of [0,255] float32 images -> probabilities, labels, image size) for a .keras, .tflite or .onnx file;
    with `tta`, each image's probabilities are averaged with its mirror image's."""
    path = resolve_model(path)
    if path.suffix in (".tflite", ".onnx"):
        from celeba.exported import load_exported

        lite = load_exported(path)
        if tta:
            return (
                (lambda batch: (lite(batch) + lite(np.ascontiguousarray(batch[:, :, ::-1]))) / 2),
                lite.labels,
                lite.image_size,
            )
        return lite, lite.labels, lite.image_size
    import tensorflow as tf

    from celeba.model import flip_averaged, load_model, model_image_size

    model, labels = load_model(path)
    if tta:
        model = flip_averaged(model)
    size = model_image_size(model)
    # One trace for every batch size (predict_on_batch retraces per shape: seconds per new face count).
    call = tf.function(lambda x: model(x, training=False), input_signature=[tf.TensorSpec([None, size, size, 3])])
    return (lambda batch: call(tf.constant(batch, tf.float32)).numpy()), labels, size


@cache
def _preprocess_graph(image_size: int) -> Callable:
    """`preprocess_image` traced once for any uint8 RGB image: the same op, without eager overhead per face."""
    import tensorflow as tf

    from celeba.data import preprocess_image

    return tf.function(
        lambda image: preprocess_image(image, image_size), input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)]
    )


@dataclass
class Face:
    box: Box
    probabilities: dict[str, float]
    found: FaceCrop | None = None  # how the face was found and aligned, and its warnings

    def as_dict(self, threshold: float) -> dict[str, Any]:
        info = self.found.info() if self.found is not None else {"box": self.box.as_dict()}
        return {
            **info,
            "probabilities": self.probabilities,
            "labels": [k for k, p in self.probabilities.items() if p >= threshold],
        }


class Predictor:
    """A loaded model plus the photo -> faces -> probabilities path; shared by the CLI and the service."""

    def __init__(
        self,
        model_path: Path,
        threshold: float = 0.5,
        max_faces: int = 10,
        detector: Detector = "blazeface",
        tta: bool = False,
    ):
        self.infer, self.labels, self.image_size = load_predictor_model(model_path, tta)
        self.model_path, self.threshold, self.max_faces = resolve_model(model_path), threshold, max_faces
        self.detector = detector

    def crops(self, rgb: np.ndarray, detect: bool = True, name: str = "image") -> list[FaceCrop]:
        return face_crops(rgb, detect, self.max_faces, self.detector, name)

    def probabilities(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        if not crops:
            return np.zeros((0, len(self.labels)), np.float32)
        prep = _preprocess_graph(self.image_size)
        batch = np.stack([prep(np.ascontiguousarray(crop[..., :3], np.uint8)).numpy() for crop in crops])
        return self.infer(batch)

    def score_photos(self, images: Sequence[np.ndarray], detect: bool = True) -> list[list[Face]]:
        """Faces of every image; all crops of all images go through the model as one batch."""
        return self.score_crops([self.crops(rgb, detect) for rgb in images])

    def score_crops(self, found: Sequence[list[FaceCrop]]) -> list[list[Face]]:
        """`crops` of several images -> their faces with probabilities, in one model call."""
        probs = self.probabilities([face.crop for faces in found for face in faces])
        out, k = [], 0
        for faces in found:
            out.append(
                [
                    Face(face.box, {lab: round(float(p), 4) for lab, p in zip(self.labels, probs[k + i])}, face)
                    for i, face in enumerate(faces)
                ]
            )
            k += len(faces)
        return out

    def result(self, name: str, rgb: np.ndarray, faces: list[Face], scale: float = 1.0) -> dict[str, Any]:
        """JSON-ready result; `scale` maps a downscaled decode's pixels back to the photo's."""
        out = [face.as_dict(self.threshold) for face in faces]
        if scale != 1.0:  # box and landmarks in the photo's pixels; warnings describe the decoded image the model saw
            for face in out:
                face["box"] = {k: int(round(v * scale)) for k, v in face["box"].items()}
                if face.get("landmarks"):
                    face["landmarks"] = {
                        name: [round(x * scale, 1), round(y * scale, 1)] for name, (x, y) in face["landmarks"].items()
                    }
        return {
            "file": name,
            "width": int(round(rgb.shape[1] * scale)),
            "height": int(round(rgb.shape[0] * scale)),
            "faces": out,
        }

    def warm_up(self) -> None:
        """One detection and one model call on a blank photo: the first request then does not pay for
        TensorFlow's tracing and OpenCV's cascade loading (seconds)."""
        blank = np.full((218, 178, 3), 128, np.uint8)
        self.score_crops([self.crops(blank, detect=True), self.crops(blank, detect=False)])


# --------------------------------------------------------------------------- the command


@dataclass
class PredictConfig:
    """Attribute probabilities for every face in photos (files or folders)."""

    paths: tuple[Path, ...] = opt(
        (), "image files or folders (folders: recursively, every image file)", positional=True, metavar="PATH"
    )
    model: Path = opt(DEFAULT_MODEL, ".keras model (run card beside it) or an exported .tflite/.onnx (card beside it)")
    detect: bool = opt(True, "find faces and crop them like CelebA; --no-detect: the images already are aligned crops")
    detector: Detector = opt(
        "blazeface", "blazeface: landmarks + CelebA alignment (Haar framing as fallback); haar: framing only"
    )
    threshold: float = opt(0.5, "a label is listed when its probability is at least this")
    max_faces: int = opt(10, "faces per image, largest first")
    batch_size: int = opt(32, "images per model call (all their faces go through the model as one batch)")
    format: Literal["table", "json", "csv"] = opt("table", "output format on stdout")
    json: bool = opt(False, "shorthand for --format json")
    csv: bool = opt(False, "shorthand for --format csv")
    max_bytes: int = opt(MAX_BYTES, "larger files are refused before they are read")
    max_megapixels: float = opt(MAX_MEGAPIXELS, "larger images are refused before they are decoded")
    tta: bool = opt(
        False, "flip test-time augmentation: average each face with its mirror image (2x the model's compute)"
    )

    @property
    def output_format(self) -> str:
        return "json" if self.json else "csv" if self.csv else self.format

    def __post_init__(self) -> None:
        at_least(self, 1, "max_faces", "batch_size", "max_bytes")
        fraction(self, "threshold")
        positive(self, "max_megapixels")


def run_predict(cfg: PredictConfig) -> tuple[list[dict[str, Any]], list[str], tuple[str, ...]]:
    """(one result per readable image, one message per unusable image or empty folder, labels), in input order.
    Nothing to score at all (only empty folders) is a FileNotFoundError, before the model is loaded."""
    from tqdm.auto import tqdm

    if not cfg.paths:
        raise FileNotFoundError("no image given: predict PATH... (files or folders)")
    files, errors = image_files(cfg.paths)
    if not files:
        raise FileNotFoundError("; ".join(errors))
    predictor = Predictor(cfg.model, cfg.threshold, cfg.max_faces, cfg.detector, cfg.tta)
    results: list[dict[str, Any]] = []
    with tqdm(
        total=len(files), unit="img", desc="predict", file=sys.stderr, disable=len(files) < 2 or not sys.stderr.isatty()
    ) as bar:  # no bar escape codes in logs
        for chunk in _chunks(files, cfg.batch_size):
            good: list[tuple[Path, np.ndarray, list]] = []
            for path in chunk:  # a bad file is reported and skipped; the others still get their output
                try:
                    rgb = read_photo(path, cfg.max_bytes, cfg.max_megapixels)
                    good.append((path, rgb, predictor.crops(rgb, cfg.detect, str(path))))
                except ImageError as exc:
                    errors.append(str(exc))
            faces = predictor.score_crops([crops for _, _, crops in good])
            results += [predictor.result(str(path), rgb, f) for (path, rgb, _), f in zip(good, faces)]
            bar.update(len(chunk))
    return results, errors, predictor.labels


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), max(1, size)):
        yield items[start : start + size]


def results_table(results: list[dict[str, Any]], labels: Sequence[str]) -> Any:
    """One row per face: file, face number, box, one probability column per label, positive labels, how the face
    was found, `partial_face` and the warnings' short names (the JSON has their full text)."""
    import pandas as pd

    rows = [
        {
            "file": r["file"],
            "face": i,
            **face["box"],
            **face["probabilities"],
            "labels": " ".join(face["labels"]),
            "method": face.get("method", ""),
            "partial_face": face.get("partial_face", False),
            "warnings": " ".join(w.split(":")[0] for w in face.get("warnings", [])),
        }
        for r in results
        for i, face in enumerate(r["faces"])
    ]
    return pd.DataFrame(
        rows, columns=["file", "face", "x", "y", "w", "h", *labels, "labels", "method", "partial_face", "warnings"]
    )

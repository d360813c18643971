"""`poetry run export --format tflite onnx --quantize float16 int8`: small model files, each with a parity check.

The exported model keeps the Keras model's contract: float32 pixels in [0, 255] from
`celeba.data.preprocess_image` in, float32 probabilities out (the [-1, 1] scaling is inside it;
int8 quantizes the weights and activations, not the interface). Parity is measured on the shipped
sample: every image through both models, maximum probability difference and label agreement. Several targets
in one call share the model load, the SavedModel the TFLite converter reads and the Keras side of the parity check.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from celeba.config import DEFAULT_MODEL, ConfigError, at_least, fraction, opt, positive, resolve_model
from celeba.data import SAMPLE_DIR
from celeba.exported import load_exported
from celeba.files import atomic_path
from celeba.runcard import RunCard, card_path
from celeba.runtime import native_noise_filtered

log = logging.getLogger(__name__)

#: Exports without --out go to this folder beside the model. Git ignores it, so a default export never replaces a
#: committed file (the committed ONNX export is regenerated with an explicit --out: docs/deployment.md).
EXPORTS_DIR = "exports"

#: Largest honest probability difference per quantization, measured on the shipped sample (see the README).
TOLERANCE = {"none": 1e-4, "float16": 0.01, "int8": 0.1, "int16x8": 0.05}


def parity_failure(out: Path, check: dict[str, Any]) -> str | None:
    """Why an exported file failed its parity check, in a sentence; None when it passed."""
    failed = []
    if check["max_abs_diff"] > check["tolerance"]:
        failed.append(f"max |probability difference| {check['max_abs_diff']:.4f} > tolerance {check['tolerance']:g}")
    if check["label_agreement"] < check["min_agreement"]:
        failed.append(
            f"labels agree on {check['label_agreement']:.2%} of decisions < {check['min_agreement']:.0%} required"
        )
    if not failed:
        return None
    return (
        f"{out}: parity check failed on {check['images']} images: {'; '.join(failed)}. "
        f"The file is kept so it can be benchmarked; do not ship it as is."
    )


def _batches(
    data_dir: Path, partition: str | None, limit: int | None, image_size: int, batch_size: int
) -> Iterator[np.ndarray]:
    from celeba.data import load_index, make_dataset, split

    index = load_index(data_dir)
    rows = split(index, partition, limit) if partition else index.iloc[:limit]
    for x, _ in make_dataset(rows, [], image_size, batch_size, training=False):
        yield x.numpy()


def saved_model(model: Any, folder: Path) -> Path:
    """Keras 3 models reach the TFLite converter as a SavedModel (its supported input); one serves every target."""
    model.export(str(folder), format="tf_saved_model", verbose=False)
    return folder


def convert(saved: Path, quantize: str, representative: list[np.ndarray] | None = None) -> bytes:
    """TFLite flatbuffer bytes from a SavedModel; int8/int16x8 calibrate on the `representative` batches."""
    import tensorflow as tf

    if quantize not in TOLERANCE:
        raise ValueError(f"unknown quantization {quantize!r}; one of {', '.join(TOLERANCE)}")

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
    if quantize != "none":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif quantize in ("int8", "int16x8"):
        if representative is None:
            raise ValueError(f"{quantize} needs a representative dataset")
        converter.representative_dataset = lambda: ([x[None]] for batch in representative for x in batch)
        # int16x8: int8 weights (the same size) with int16 activations, for decisions near the threshold.
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.TFLITE_BUILTINS_INT8
            if quantize == "int8"
            else tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
        ]
    with native_noise_filtered():  # the quantizer prints its settings to fd 2
        return converter.convert()


def convert_onnx(model: Any, opset: int = 17, metadata: dict[str, str] | None = None) -> bytes:
    """ONNX bytes via tf2onnx (float32; quantize with onnxruntime's tools if needed).

    `metadata` goes into the file's metadata_props: the model travels alone (e.g. to Tensorleap), without its card.
    """
    import onnx
    import tensorflow as tf
    import tf2onnx

    from celeba.model import model_image_size

    size = model_image_size(model)
    spec = (tf.TensorSpec((None, size, size, 3), tf.float32, name="image"),)
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=opset)
    onnx.helper.set_model_props(proto, metadata or {})
    return proto.SerializeToString()


def parity(
    model: Any, exported: Sequence[Callable], batches: Iterator[np.ndarray], threshold: float = 0.5
) -> list[dict]:
    """The Keras model and every exported model on the same preprocessed images, in one pass (the Keras side once):
    per exported model, probability differences and label agreement."""
    keras_probs: list[np.ndarray] = []
    other_probs: list[list[np.ndarray]] = [[] for _ in exported]
    for x in batches:
        keras_probs.append(np.asarray(model.predict_on_batch(x)))
        for probs, run in zip(other_probs, exported):
            probs.append(run(x))
    a = np.concatenate(keras_probs)
    checks = []
    for probs in other_probs:
        b = np.concatenate(probs)
        diff = np.abs(a - b)
        checks.append(
            {
                "images": len(a),
                "max_abs_diff": float(diff.max()),
                "mean_abs_diff": float(diff.mean()),
                "label_agreement": float(((a >= threshold) == (b >= threshold)).mean()),
            }
        )
    return checks


@dataclass
class ExportConfig:
    """Export a trained model to TFLite (float16, int8, int16x8) and/or ONNX, and check each file against the Keras
    model on the shipped sample."""

    model: Path = opt(DEFAULT_MODEL, "the saved .keras model (run card beside it) to export")
    format: tuple[Literal["tflite", "onnx"], ...] = opt(
        ("tflite",), "tflite (TensorFlow Lite) and/or onnx (onnxruntime); several in one call share the work"
    )
    quantize: tuple[Literal["none", "float16", "int8", "int16x8"], ...] = opt(
        ("float16",),
        "tflite only (onnx is exported as float32): float16 weights, int8 weights and activations, or "
        "int16x8 (int8 weights, int16 activations); several write one file each",
    )
    out: Path | None = opt(
        None,
        "the exported file, when there is one; its card goes beside it",
        none=f"{EXPORTS_DIR}/<name>-<quantize>.tflite or {EXPORTS_DIR}/<name>-float32.onnx beside the model",
    )
    data_dir: Path = opt(SAMPLE_DIR, "int8/int16x8 calibration images come from this folder's train partition")
    representative: int = opt(100, "training images for int8/int16x8 calibration")
    parity_dir: Path = opt(
        SAMPLE_DIR, "every image of this CelebA folder goes through both models for the parity check"
    )
    parity_limit: int | None = opt(None, "at most N parity images", none="all")
    tolerance: float | None = opt(
        None,
        "largest allowed |probability difference| between the two models",
        none="none 1e-4, float16 0.01, int8 0.1, int16x8 0.05",
    )
    min_agreement: float = opt(0.99, "fraction of (image, label) decisions that must agree")
    batch_size: int = opt(32, "images per conversion and parity batch")
    force: bool = opt(False, "replace an existing --out file (of the same kind)")

    def __post_init__(self) -> None:
        at_least(self, 1, "representative", "parity_limit", "batch_size")
        positive(self, "tolerance", zero=True)
        fraction(self, "min_agreement")
        if not self.format or not self.quantize:
            raise ConfigError("--format and --quantize need at least one value each")
        if self.out is not None and len(self.targets()) > 1:
            raise ConfigError(
                f"--out {self.out}: names one file, but {len(self.targets())} targets were asked for; "
                f"leave --out out and each file goes to {EXPORTS_DIR}/ beside the model"
            )

    def targets(self) -> list[tuple[str, str]]:
        """(format, quantize) per file to write, in order, without repeats; onnx is always float32."""
        tflite: list[tuple[str, str]] = [("tflite", q) for q in dict.fromkeys(self.quantize)]
        return (tflite if "tflite" in self.format else []) + ([("onnx", "none")] if "onnx" in self.format else [])

    def out_path(self, fmt: str, quantize: str) -> Path:
        """--out, else `exports/<name>-<quantize>.tflite` or `exports/<name>-float32.onnx` beside the model."""
        if self.out is not None:
            return self.out
        suffix = "-float32.onnx" if fmt == "onnx" else f"-{quantize}.tflite"
        model = Path(self.model)
        return model.parent / EXPORTS_DIR / (model.stem + suffix)


def file_kind(path: Path) -> str:
    """What a file is, from its first bytes: tflite, keras (zip), h5, onnx, json or unknown."""
    if Path(path).is_file():
        with open(path, "rb") as f:
            head = f.read(8)  # the header only, not the whole model
    else:
        head = b""
    if head[4:8] == b"TFL3":
        return "tflite"
    if head.startswith(b"PK"):
        return "keras"
    if head.startswith(b"\x89HDF"):
        return "h5"
    if head.lstrip()[:1] in (b"{", b"["):
        return "json"
    try:
        import onnx

        onnx.load_model(str(path), load_external_data=False)
        return "onnx"
    except Exception:  # not parseable as an ONNX protobuf
        return "unknown"


def check_out(out: Path, fmt: str, model: Path, force: bool) -> None:
    """Refuse an --out that would replace a different kind of file, its run card, or any file without --force."""
    from celeba.model import read_card

    expected = ".onnx" if fmt == "onnx" else ".tflite"
    if out.suffix != expected:
        raise FileExistsError(f"--out {out}: a {fmt} export must be named *{expected}")
    if card_path(out) == card_path(model):  # the export's card would overwrite the model's run card
        raise FileExistsError(f"--out {out}: pick another name than the model's ({model})")
    if out.exists():
        kind = f"{file_kind(out)} file" if out.is_file() else "folder"
        if not kind.startswith(fmt):
            article = "an" if kind[0] in "aeiouh" else "a"
            raise FileExistsError(
                f"--out {out}: exists and is {article} {kind}, not a {fmt} model; "
                "not replacing it (not even with --force)"
            )
        if not force:
            raise FileExistsError(f"--out {out}: exists; pass --force to replace it")
    card = card_path(out)
    if card.exists():
        if "source_model" not in read_card(card):
            raise FileExistsError(
                f"--out {out}: {card} is the run card of a trained model, which the export's "
                f"card would replace; pick another --out"
            )
        if not force:
            raise FileExistsError(f"--out {out}: {card} exists; pass --force to replace it")


@dataclass(frozen=True)
class Exported:
    """One exported file, its run card beside it, and its parity check against the Keras model it came from."""

    model: Path
    format: str  # tflite or onnx
    quantize: str  # float16, int8, int16x8; float32 for ONNX
    size_bytes: int
    keras_size_bytes: int
    source_model: Path
    parity: dict[str, Any]  # images, max/mean |dp|, label agreement, tolerance, passed (`verify`)

    @property
    def card(self) -> Path:
        return card_path(self.model)

    @property
    def failure(self) -> str | None:
        """None where the parity check passed, else a sentence with the numbers (`parity_failure`)."""
        return parity_failure(self.model, self.parity)


def export(cfg: ExportConfig) -> list[Exported]:
    """Write every target's file and card (labels, parity), in order. A file that fails its parity check is kept
    and its card says so (`Exported.failure`): the caller decides what that means."""
    from celeba.model import load_model, model_image_size

    cfg = dataclasses.replace(cfg, model=resolve_model(cfg.model))
    plan = [(fmt, quantize, cfg.out_path(fmt, quantize)) for fmt, quantize in cfg.targets()]
    for fmt, _, out in plan:  # refuse before any work, not after the first file
        check_out(out, fmt, Path(cfg.model), cfg.force)
    if any(fmt == "onnx" for fmt, _, _ in plan):  # a missing ONNX package fails before the TFLite files, too
        import onnxruntime  # noqa: F401
        import tf2onnx  # noqa: F401
    model, labels = load_model(cfg.model)
    size = model_image_size(model)
    cards = []
    with tempfile.TemporaryDirectory() as tmp:
        saved: Path | None = None
        representative: list[np.ndarray] | None = None
        for fmt, quantize, out in plan:
            log.info("converting %s to %s (%s)", cfg.model, fmt, "float32" if fmt == "onnx" else quantize)
            if fmt == "onnx":
                source = RunCard.load(cfg.model) if card_path(cfg.model).is_file() else None
                flatbuffer = convert_onnx(
                    model,
                    metadata={  # JSON values: what celeba reads back (leap_binder.py)
                        "labels": json.dumps(list(labels)),
                        "image_size": str(size),
                        "class_weights": json.dumps(source.class_weights if source else None),
                    },
                )
            else:
                saved = saved or saved_model(model, Path(tmp) / "saved_model")
                if quantize in ("int8", "int16x8") and representative is None:
                    representative = list(_batches(cfg.data_dir, "train", cfg.representative, size, cfg.batch_size))
                flatbuffer = convert(saved, quantize, representative)
            card = RunCard(
                model=str(out),
                config={"labels": list(labels), "image_size": size},
                extra={
                    "source_model": str(cfg.model),
                    "format": fmt,
                    "quantize": quantize,
                    "size_bytes": len(flatbuffer),
                    "keras_size_bytes": Path(cfg.model).stat().st_size,
                },
            )
            card.save(card_path(out))  # labels first: the exported model reads them
            with atomic_path(out) as tmp_out:
                tmp_out.write_bytes(flatbuffer)
            cards.append(card)
    for card, check in zip(cards, verify(model, [Path(card.model) for card in cards], cfg)):
        card.extra["parity"] = check
        card.save(card_path(Path(card.model)))
    return [
        Exported(
            model=Path(card.model),
            format=card.extra["format"],
            quantize=card.extra["quantize"],
            size_bytes=card.extra["size_bytes"],
            keras_size_bytes=card.extra["keras_size_bytes"],
            source_model=Path(card.extra["source_model"]),
            parity=card.extra["parity"],
        )
        for card in cards
    ]


def verify(model: Any, outs: Sequence[Path], cfg: ExportConfig) -> list[dict[str, Any]]:
    """Compare exported files with the Keras model on `cfg.parity_dir`, in one pass over the images; each check
    says whether it passed (tolerance per quantization unless `cfg.tolerance` is set)."""
    from celeba.model import model_image_size

    size = model_image_size(model)
    loaded = [load_exported(out) for out in outs]
    checks = parity(model, loaded, _batches(cfg.parity_dir, None, cfg.parity_limit, size, cfg.batch_size))
    for out, check in zip(outs, checks):
        quantize = RunCard.load(card_path(out)).extra.get("quantize", "none")  # the card says what the file is
        tolerance = TOLERANCE[quantize] if cfg.tolerance is None else cfg.tolerance
        check |= {
            "tolerance": tolerance,
            "min_agreement": cfg.min_agreement,
            "parity_dir": str(cfg.parity_dir),
            "passed": check["max_abs_diff"] <= tolerance and check["label_agreement"] >= cfg.min_agreement,
        }
    return checks


def parity_line(check: dict[str, Any]) -> str:
    """One readable line of a parity check, for the CLI."""
    return (
        f"parity on {check['images']} images: max |dp| {check['max_abs_diff']:.5f} "
        f"(tolerance {check['tolerance']:g}), mean |dp| {check['mean_abs_diff']:.5f}, "
        f"labels agree {check['label_agreement']:.2%} (need {check['min_agreement']:.0%}): "
        f"{'PASS' if check['passed'] else 'FAIL'}"
    )

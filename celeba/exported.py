"""An exported model file (.tflite or .onnx) as a callable, with the labels its run card names: what `predict`,
`serve` and the parity check of `celeba.export` run."""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path

import numpy as np

from celeba.runcard import RunCard, card_path
from celeba.runtime import native_noise_filtered

log = logging.getLogger(__name__)


def exported_labels(path: Path) -> tuple[str, ...]:
    """The labels of an exported model, from the card `export` wrote beside it (checked to be its card)."""
    from celeba.model import ModelFileError

    card = card_path(path)
    if not card.is_file():
        raise ModelFileError(
            f"{card}: card of the exported model not found; it holds the label names "
            f"(export again, or copy the .json written with {Path(path).name})"
        )
    loaded = RunCard.load(card)
    size = loaded.extra.get("size_bytes")
    if size is not None and size != Path(path).stat().st_size:
        raise ModelFileError(
            f"{card}: written for a {size}-byte file, but {path} has {Path(path).stat().st_size} "
            f"bytes: the card belongs to another export"
        )
    return tuple(loaded.labels)


class TFLiteModel:
    """A `.tflite` file as a callable: batch of [0, 255] float32 images -> probabilities."""

    def __init__(self, path: Path, num_threads: int | None = None):
        import tensorflow as tf

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: TFLite model not found (make one with `celeba export`)")
        self.path = path
        try:
            with warnings.catch_warnings():  # tf.lite.Interpreter works in TF 2.21 but warns it moves to ai-edge-litert
                warnings.simplefilter("ignore", UserWarning)
                self.interpreter = tf.lite.Interpreter(model_path=str(path), num_threads=num_threads or os.cpu_count())
            with native_noise_filtered():  # the process's first allocation prints TFLite's XNNPACK delegate line
                self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError, UnicodeDecodeError) as exc:  # random bytes, a truncated or foreign file
            from celeba.model import ModelFileError

            why = " ".join(str(exc).split())[:200]
            raise ModelFileError(
                f"{path}: not a TFLite model, or a truncated one ({type(exc).__name__}: {why})"
            ) from None
        self._input = self.interpreter.get_input_details()[0]["index"]
        self._output = self.interpreter.get_output_details()[0]["index"]
        self.image_size = int(self.interpreter.get_input_details()[0]["shape"][1])
        self._batch = 0
        self.labels = exported_labels(path)
        outputs = int(self.interpreter.get_output_details()[0]["shape"][-1])
        if outputs != len(self.labels):
            from celeba.model import ModelFileError

            raise ModelFileError(
                f"{path}: model has {outputs} outputs but its card names {len(self.labels)} labels {list(self.labels)}"
            )

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch, np.float32)
        if len(batch) != self._batch:  # resize once per new batch size, not per call
            self.interpreter.resize_tensor_input(self._input, batch.shape)
            self.interpreter.allocate_tensors()
            self._batch = len(batch)
        self.interpreter.set_tensor(self._input, batch)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self._output).copy()


class OnnxModel:
    """A `.onnx` file (onnxruntime) as a callable: batch of [0, 255] float32 images -> probabilities."""

    def __init__(self, path: Path, num_threads: int | None = None):
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: ONNX model not found (make one with `celeba export --format onnx`)")
        options = ort.SessionOptions()
        options.intra_op_num_threads = num_threads or os.cpu_count()
        try:
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime's own error types (InvalidProtobuf, Fail, ...): not an ONNX model
            from celeba.model import ModelFileError

            why = " ".join(str(exc).split())[:200]
            raise ModelFileError(f"{path}: not an ONNX model, or a truncated one ({why})") from None
        self.path, self.session = path, session
        self._input = self.session.get_inputs()[0].name
        self.image_size = int(self.session.get_inputs()[0].shape[1])
        inside = self.session.get_modelmeta().custom_metadata_map.get("labels")
        if inside and not card_path(path).is_file():  # the labels travel inside the file (export writes them)
            self.labels = tuple(json.loads(inside))
        else:
            self.labels = exported_labels(path)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self._input: np.asarray(batch, np.float32)})[0]


def load_exported(path: Path) -> TFLiteModel | OnnxModel:
    return OnnxModel(path) if Path(path).suffix == ".onnx" else TFLiteModel(path)

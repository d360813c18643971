"""The process around the pipelines: quiet TensorFlow start-up, the device line, terminal-aware progress output."""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger("celeba")

#: TensorFlow's start-up lines that are not the user's business (written by C++ before logging is set up, so
#: TF_CPP_MIN_LOG_LEVEL cannot hide them): the absl preamble, oneDNN, the CUDA stub on CPU machines, CPU features.
_STARTUP_NOISE = (
    "All log messages before absl::InitializeLog()",
    "port.cc",
    "cudart_stub.cc",
    "cpu_feature_guard.cc",
    "To enable the following instructions",
    "rebuild TensorFlow with",
    "Unable to register cu",
    "computation_placer.cc",
    "cuda_platform.cc",
    "Created TensorFlow Lite XNNPACK delegate",
    "fully_quantize: ",  # the TFLite quantizer's settings, printed by every int8/int16x8 conversion
)


def quiet_tensorflow() -> None:
    """Import TensorFlow with its C++ start-up chatter filtered out, whatever TF_CPP_MIN_LOG_LEVEL holds.

    Unset, the level becomes 3; a level the user set is kept for TensorFlow's later lines. The lines it writes
    before its logging exists (the absl preamble, the CUDA stub) go to file descriptor 2 directly, at any level,
    and the first device query prints `failed call to cuInit` (an E line on every CPU-only machine) below level
    3: both happen here, inside `native_noise_filtered`.
    """
    if "tensorflow" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with native_noise_filtered():
        import tensorflow as tf

        tf.config.list_physical_devices("GPU")


_FD2 = threading.Lock()  # file descriptor 2 is the process's: one redirection at a time (serve runs threads)


@contextmanager
def native_noise_filtered() -> Iterator[None]:
    """Catch what C++ code writes to file descriptor 2 meanwhile, and pass on every line that is not known noise
    (`_STARTUP_NOISE`): TensorFlow's start-up, TFLite's delegate line, the quantizer's settings. For one-off
    steps only (imports, loading, converting), never per request: what other threads write to stderr meanwhile
    is held back until it ends."""
    with _FD2, tempfile.TemporaryFile() as caught:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            kept = [
                line
                for line in caught.read().decode(errors="replace").splitlines(keepends=True)
                if line.strip() and not any(noise in line for noise in _STARTUP_NOISE)
            ]
            sys.stderr.write("".join(kept))


def device_line() -> str:
    """The device the computation runs on, in one line (after `quiet_tensorflow`)."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return f"device: CPU ({os.cpu_count()} cores, no GPU visible)"
    names = []
    for gpu in gpus:
        details = tf.config.experimental.get_device_details(gpu)
        names.append(details.get("device_name", gpu.name))
    return f"device: {len(gpus)} GPU(s): {', '.join(names)}"


def progress_bars_on_a_terminal_only() -> None:
    """Outside a terminal (a log file, a pipe) every tqdm bar of the process prints nothing: its carriage-return
    frames would fill the log. Covers the bars of every module and library made through `tqdm` or `tqdm.auto`
    after this call, whatever `disable` they pass; in a terminal nothing changes."""
    if sys.stderr.isatty():
        return
    import tqdm
    import tqdm.auto

    if getattr(tqdm.auto.tqdm, "silent_outside_a_terminal", False):
        return
    for module in (tqdm, tqdm.auto):
        module.tqdm = _silent(module.tqdm)


def _silent(bar: type) -> type:
    """A subclass of a tqdm class whose bars are always disabled."""

    class Silent(bar):
        silent_outside_a_terminal = True

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    Silent.__name__ = Silent.__qualname__ = bar.__name__
    return Silent


def keras_verbose() -> int:
    """Keras' progress bar on a terminal; one plain line per epoch (no cursor or colour codes) in logs and pipes."""
    return 1 if sys.stdout.isatty() else 2


def setup_logging(level: int = logging.INFO) -> None:
    """The project's own lines from `level` up; other libraries' (tf2onnx's optimizer report, TensorFlow's
    SavedModel writer) only from WARNING up: their INFO lines are not the user's business."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    log.setLevel(level)

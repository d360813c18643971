"""Image files to model inputs: decoding, the centre square, resizing, and the training augmenter."""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from celeba.data.annotations import is_url

log = logging.getLogger(__name__)


def _image_problem(path: str) -> str | None:
    from PIL import Image

    try:
        if is_url(path):
            import tensorflow as tf

            with tf.io.gfile.GFile(path, "rb") as f, Image.open(io.BytesIO(f.read())) as image:
                image.load()
        else:
            with Image.open(path) as image:
                image.load()
    except Exception as exc:  # PIL raises many types for bad files; every one means "skip it"
        return f"unreadable image ({type(exc).__name__}: {exc})"
    return None


def find_bad_images(paths: Sequence[str], workers: int = 8) -> dict[str, str]:
    """Fully decode every image (in threads) and return {path: problem} for those that fail."""
    from tqdm.auto import tqdm

    with ThreadPoolExecutor(workers) as pool:
        results = list(
            tqdm(
                pool.map(_image_problem, paths),
                total=len(paths),
                desc="checking images",
                unit="img",
                disable=len(paths) < 2000,
                leave=False,
            )
        )
    return {path: problem for path, problem in zip(paths, results) if problem}


# --------------------------------------------------------------------------- tf.data


def preprocess_image(image: Any, image_size: int) -> Any:
    """Centre-crop to a square (178x218 -> 178x178 for aligned CelebA) and resize; float32 in [0, 255].

    The one preprocessing step every consumer calls. Scaling to [-1, 1] happens inside the model.
    """
    import tensorflow as tf

    image = tf.convert_to_tensor(image)
    if image.shape.rank == 2:
        image = image[..., None]
    if image.shape[-1] == 1:
        image = tf.image.grayscale_to_rgb(image)
    elif image.shape[-1] == 4:
        image = image[..., :3]
    return resize_square(centre_square(image), image_size)


def centre_square(image: Any) -> Any:
    """The largest centred square of an HxWxC image."""
    import tensorflow as tf

    shape = tf.shape(image)
    side = tf.minimum(shape[0], shape[1])
    return tf.image.crop_to_bounding_box(image, (shape[0] - side) // 2, (shape[1] - side) // 2, side, side)


def resize_square(square: Any, image_size: int) -> Any:
    import tensorflow as tf

    return tf.cast(tf.image.resize(square, (image_size, image_size), antialias=True), tf.float32)


_MAGIC = (b"\xff\xd8", b"\x89PNG", b"GIF8", b"BM")  # JPEG, PNG, GIF, BMP signatures


def decode_image(raw: Any, path: Any = "") -> Any:
    """Decode JPEG/PNG/BMP/GIF bytes to uint8 RGB (grayscale and RGBA are converted)."""
    import tensorflow as tf

    known = tf.reduce_any([tf.equal(tf.strings.substr(raw, 0, len(m)), m) for m in _MAGIC])
    # Name the file in the error: a bare "Unknown image file format" does not say which one.
    check = tf.debugging.Assert(known, ["not a JPEG/PNG/GIF/BMP image (empty or corrupt file):", path])
    with tf.control_dependencies([check]):
        image = tf.io.decode_image(tf.identity(raw), channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def decode_square(raw: Any, path: Any = "") -> Any:
    """uint8 RGB centre square of an encoded image: the same pixels as `centre_square(decode_image(raw))`.

    A JPEG's header gives its size, and `decode_and_crop_jpeg` then decodes only the square's
    window (aligned CelebA: 178 of 218 rows), a fifth less work; other formats decode fully.
    """
    import tensorflow as tf

    def jpeg() -> Any:
        shape = tf.image.extract_jpeg_shape(raw)
        side = tf.minimum(shape[0], shape[1])
        top, left = (shape[0] - side) // 2, (shape[1] - side) // 2
        # Chroma upsampling at a window's left/right edge differs from the full decode; one MCU (16 px)
        # of margin on each side, cut off afterwards, keeps the pixels identical. Rows need none.
        margin = tf.minimum(left, 16)
        window = tf.stack([top, left - margin, side, tf.minimum(side + 2 * margin, shape[1] - left + margin)])
        return tf.image.decode_and_crop_jpeg(raw, window, channels=3)[:, margin : margin + side]

    is_jpeg = tf.equal(tf.strings.substr(raw, 0, len(_MAGIC[0])), _MAGIC[0])
    image = tf.cond(is_jpeg, jpeg, lambda: centre_square(decode_image(raw, path)))
    image.set_shape([None, None, 3])
    return image


def load_image(path: Any, image_size: int) -> Any:
    """Read, decode and preprocess one image file (a path string or a string tensor)."""
    import tensorflow as tf

    return resize_square(decode_square(tf.io.read_file(path), path), image_size)


def make_augmenter(seed: int = 0, framing: bool = True, strength: float = 1.0) -> Any:
    """Small, label-preserving augmentations for training batches (a flipped face keeps its gender and age).

    `framing` adds shift (up to 12% of the side) and scale (0.8-1.2) jitter, so that a face framed a little
    differently from CelebA's alignment (a phone photo, another detector's crop) is still scored well.
    `strength` scales every range (rotation, shift, scale, brightness, contrast), capped where a layer's range ends;
    the flip is always on.
    """
    import keras

    def scaled(value: float, cap: float = 0.95) -> float:
        return min(value * strength, cap)

    framing_layers = (
        [
            keras.layers.RandomTranslation(scaled(0.12), scaled(0.12), fill_mode="reflect", seed=seed),
            keras.layers.RandomZoom((-scaled(0.2), scaled(0.2)), fill_mode="reflect", seed=seed),
        ]
        if framing
        else [keras.layers.RandomZoom(scaled(0.08), fill_mode="reflect", seed=seed)]
    )
    return keras.Sequential(
        [
            keras.layers.RandomFlip("horizontal", seed=seed),
            keras.layers.RandomRotation(scaled(0.03, cap=0.5), fill_mode="reflect", seed=seed),
            *framing_layers,
            keras.layers.RandomBrightness(scaled(0.1, cap=1.0), value_range=(0, 255), seed=seed),
            keras.layers.RandomContrast(scaled(0.1), seed=seed),
        ],
        name="augment",
    )

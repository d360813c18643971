import numpy as np
import pytest
from PIL import Image

from celeba.data import image_dir
from celeba.faces import CELEBA_FRAMING, CELEBA_SIZE, Box, crop_face, crop_rect, detect_faces, faces_in, measure_framing


@pytest.fixture(scope="module")
def sample_images(sample_dir):
    paths = sorted(image_dir(sample_dir).glob("*.jpg"))
    return [np.asarray(Image.open(p).convert("RGB")) for p in paths]


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_framing_constants_are_what_the_sample_measures(sample_images):
    framing, found, seen = measure_framing(sample_images)
    assert seen == len(sample_images) == 299
    assert found / seen > 0.9  # the Haar cascade finds faces in nearly every aligned CelebA image
    for field in ("width", "height", "dx", "dy"):
        assert getattr(framing, field) == pytest.approx(getattr(CELEBA_FRAMING, field), abs=0.02), field


def test_crop_recovers_the_celeba_frame_from_a_larger_photo(sample_images):
    """Paste aligned images, enlarged 1.5x, into a bigger photo: the crop must land on the pasted frame."""
    ious = []
    for rgb in sample_images[:40]:
        photo = np.full((600, 500, 3), 110, np.uint8)
        big = np.asarray(Image.fromarray(rgb).resize((267, 327), Image.BICUBIC))
        photo[150:477, 120:387] = big
        boxes = detect_faces(photo)
        if boxes:
            ious.append(_iou(crop_rect(boxes[0]), (120, 150, 387, 477)))
    assert len(ious) >= 35
    assert np.median(ious) > 0.8
    assert np.mean(np.array(ious) > 0.6) > 0.9


def test_crop_face_shape_and_borders_outside_the_photo(sample_images):
    rgb = sample_images[1]
    crop = crop_face(rgb, Box(-30, -40, 120, 120))  # the crop leaves the photo on two sides
    assert crop.shape == (CELEBA_SIZE[1], CELEBA_SIZE[0], 3) and crop.dtype == np.uint8
    # The crop of an aligned image around its own detected box is close to the image itself.
    box = detect_faces(rgb)[0]
    assert np.abs(crop_face(rgb, box).astype(float) - rgb).mean() < 40


def test_no_face_in_a_blank_or_noisy_image():
    assert detect_faces(np.full((300, 300, 3), 128, np.uint8)) == []
    noise = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    assert faces_in(noise) == []


def test_large_photo_is_detected_on_a_downscaled_copy_and_boxes_map_back(sample_images):
    photo = np.full((2400, 3000, 3), 90, np.uint8)
    face = np.asarray(Image.fromarray(sample_images[1]).resize((712, 872), Image.BICUBIC))  # 4x
    photo[1000:1872, 1500:2212] = face
    boxes = detect_faces(photo)
    assert boxes, "face not found in a 7 megapixel photo"
    assert _iou(crop_rect(boxes[0]), (1500, 1000, 2212, 1872)) > 0.6

import numpy as np
import pytest
from PIL import Image

from celeba.data import image_dir
from celeba.face_measure import measure_framing
from celeba.faces import CELEBA_FRAMING, CELEBA_SIZE, Box, crop_face, crop_rect, detect_faces, faces_in


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


# --------------------------------------------------------------------------- BlazeFace + CelebA alignment
# Generated framings of the embedded sample (celeba.framings), so the true face position is known.


@pytest.fixture(scope="module")
def few(sample_images):
    return sample_images[:12]


def _eye_line(landmarks) -> float:
    from celeba.face_warnings import roll_and_yaw

    return roll_and_yaw(landmarks)[0]


def test_landmark_constants_are_what_the_sample_measures(sample_images):
    """CELEBA_LANDMARKS came from 1,000 shared train images; 60 other aligned images give the same means."""
    from celeba.face_measure import measure_landmarks
    from celeba.faces import CELEBA_LANDMARKS

    mean, _, found, seen = measure_landmarks(sample_images[:60])
    assert found >= 58 and seen == 60
    np.testing.assert_allclose(mean, CELEBA_LANDMARKS, atol=2.5)


def test_aligning_an_aligned_image_changes_little(few):
    from celeba.faces import find_faces

    diffs, partial = [], 0
    for rgb in few:
        faces = find_faces(rgb)
        assert len(faces) == 1 and faces[0].method == "blazeface+align"
        partial += faces[0].partial_face
        diffs.append(np.abs(faces[0].crop.astype(float) - rgb)[40:180, 30:150].mean())
    assert partial <= 1  # CelebA's own framing is not partial (1% of CelebA images are, by the threshold)
    assert np.median(diffs) < 25  # the same face, slightly moved; a different face differs by ~50


def test_tight_crop_is_one_complete_face_aligned_and_warned_tight(few):
    """A crop in which the face fills 90% of the frame: one face (no mirror face from the padding), aligned so
    its landmarks land on CelebA's, not partial (the whole face is in the photo) but warned `tight_crop` (hair
    and background were filled by reflection), and close to the aligned original.
    A detection the detector is unsure of (one sample image, face turned down) must at least say so."""
    from celeba.face_warnings import MIN_SCORE
    from celeba.faces import CELEBA_LANDMARKS, alignment_matrix, find_faces
    from celeba.framings import tight

    close = sure = 0
    for rgb in few:
        faces = find_faces(tight(rgb, 0.9))
        assert len(faces) == 1, "the reflected border's mirror faces must be dropped"
        face = faces[0]
        assert face.method == "blazeface+align"
        if face.score < MIN_SCORE:
            assert any(w.startswith("low_score") for w in face.warnings)
            continue
        sure += 1
        assert not face.partial_face and not any(w.startswith("partial_face") for w in face.warnings)
        assert any(w.startswith("tight_crop") for w in face.warnings)
        matrix = alignment_matrix(face.landmarks)
        mapped = face.landmarks @ matrix[:, :2].T + matrix[:, 2]
        assert np.abs(mapped - CELEBA_LANDMARKS).max() < 12
        # The face region is closer to its own aligned original than to any other image's (the same face).
        diffs = [np.abs(face.crop.astype(float) - other)[60:170, 45:135].mean() for other in few]
        close += int(np.argmin(diffs)) == next(i for i, other in enumerate(few) if other is rgb)
    assert sure >= 11 and close >= 10


def test_outside_fraction_is_over_the_centre_square_the_model_sees():
    """warp's fraction of the view outside the photo counts only the centre 178x178 square of the 178x218 crop
    (what preprocess_image keeps), not the strips above and below it."""
    from celeba.faces import warp

    width, height = CELEBA_SIZE
    top = (height - width) // 2
    shift = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, top]])  # photo pixel (x, y) -> crop pixel (x, y + top)
    square = np.full((width, width, 3), 128, np.uint8)  # exactly the centre square: nothing of the view is outside
    assert warp(square, shift)[1] == pytest.approx(0.0, abs=0.01)
    half = np.full((width // 2, width, 3), 128, np.uint8)  # the upper half of the square only
    assert warp(half, shift)[1] == pytest.approx(0.5, abs=0.01)
    upper = np.full((top + width // 2, width, 3), 128, np.uint8)  # from the crop's top row to the square's middle
    assert warp(upper, np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))[1] == pytest.approx(0.5, abs=0.01)


def test_box_outside_partial_and_mirror_rules_on_known_boxes():
    from celeba.faces import Detection, box_outside, drop_mirror_faces, is_partial

    shape = (200, 200, 3)
    assert box_outside(Box(0, 0, 200, 200), shape) == 0 and box_outside(Box(-50, 0, 100, 100), shape) == 0.5
    eyes_in = np.array([[60, 80], [140, 80], [100, 110], [100, 140]], np.float32)
    assert not is_partial(Detection(Box(-30, 0, 100, 100), 0.9, eyes_in), shape)  # 30% of the box outside
    assert is_partial(Detection(Box(-40, 0, 100, 100), 0.9, eyes_in), shape)  # 40%
    assert is_partial(Detection(Box(10, 10, 180, 180), 0.9, eyes_in - [70, 0]), shape)  # an eye outside
    assert is_partial(Detection(Box(-40, 0, 100, 100)), shape)  # Haar: the box alone decides

    face, phantom = Detection(Box(20, 20, 160, 160), 0.9), Detection(Box(-80, 20, 150, 150), 0.55)  # 53% outside

    def never() -> list:
        raise AssertionError("no detection without mirror images is needed here")

    assert drop_mirror_faces([face], shape, never) == [face]
    assert drop_mirror_faces([phantom], shape, never) == [phantom]  # nothing else: a face cut by the edge
    small = Detection(Box(-10, 20, 30, 30), 0.5)  # two faces partly outside: the more confident one stays
    assert drop_mirror_faces([phantom, small], shape, lambda: []) == [phantom]
    assert drop_mirror_faces([face, phantom], shape, lambda: []) == [face]
    assert drop_mirror_faces([face, phantom], shape, lambda: [face]) == [face]  # the grey look finds only the face
    again = Detection(Box(0, 30, 75, 130), 0.8)  # the grey look finds the cut face too (smaller: no mirror half)
    assert drop_mirror_faces([face, phantom], shape, lambda: [face, again]) == [face, phantom]
    big = Detection(Box(-60, -20, 220, 220), 0.9)  # a face larger than the photo (34% outside), and its phantom
    assert drop_mirror_faces([big, phantom], shape, lambda: [big]) == [big]


def _sample(sample_dir, name: str) -> np.ndarray:
    from pathlib import Path

    return np.asarray(Image.open(Path(image_dir(sample_dir)) / name).convert("RGB"))


def test_a_phantom_in_the_reflected_border_is_dropped(sample_dir, monkeypatch):
    """Tight crops of these sample images made BlazeFace find a second face half in the mirrored border (for
    089932 the phantom is even the largest face): only the real face is left, complete, not partial."""
    import celeba.faces as faces
    from celeba.framings import tight

    for name in ("089932.jpg", "127501.jpg"):
        rgb = tight(_sample(sample_dir, name), 0.9)
        found = faces.find_faces(rgb)
        assert len(found) == 1, name
        assert not found[0].partial_face and faces.box_outside(found[0].box, rgb.shape) < 0.1
    with monkeypatch.context() as patch:  # the test exercises the rule: without it, the phantom is there
        patch.setattr(faces, "drop_mirror_faces", lambda found, shape, without_mirror: found)
        assert len(faces.find_faces(tight(_sample(sample_dir, "089932.jpg"), 0.9))) == 2


@pytest.mark.parametrize("i", [1, 2])
def test_a_face_cut_by_the_photo_edge_is_partial_and_kept_beside_another(few, i):
    """The left 45% of a tight crop cut away: the face really runs past the photo edge, so it is flagged
    partial_face with the warning. Beside a complete face, that cut face is a real second face (half in the
    mirrored border, like a phantom, but found without the mirror too): kept, and the only partial one."""
    from celeba.faces import find_faces
    from celeba.framings import tight

    a, b = tight(few[i], 0.9), tight(few[i + 3], 0.9)
    keep = int(224 * 0.55)
    cut = find_faces(np.ascontiguousarray(a[:, 224 - keep :]))
    assert len(cut) == 1 and cut[0].partial_face
    assert any(w.startswith("partial_face") for w in cut[0].warnings)
    pair = np.ascontiguousarray(np.concatenate([a, b[:, :keep]], axis=1))  # b's right 45% is cut off
    found = sorted(find_faces(pair), key=lambda f: f.box.x)
    assert len(found) == 2
    assert not found[0].partial_face and found[1].partial_face and found[1].box.x > 224


@pytest.mark.parametrize("degrees", [30.0, -30.0])
def test_rotated_face_is_found_and_derotated(few, degrees):
    """cv2 rotates counter-clockwise for positive angles, so the eye line tilts by -degrees; alignment levels it."""
    from celeba.faces import detect_landmarks, find_faces
    from celeba.framings import rotated

    rolls, levelled, warned, matched = [], [], 0, 0
    for i, rgb in enumerate(few[:6]):
        faces = find_faces(rotated(rgb, degrees, np.random.default_rng(i)))
        assert faces and faces[0].method == "blazeface+align"
        rolls.append(faces[0].roll)
        warned += any(w.startswith("rotated") for w in faces[0].warnings)  # |roll| > 25: the face's own tilt adds
        again = detect_landmarks(faces[0].crop)  # an independent look at the aligned crop: are the eyes level?
        if again:
            levelled.append(_eye_line(again[0].landmarks))
        diffs = [np.abs(faces[0].crop.astype(float) - other)[60:170, 45:135].mean() for other in few]
        matched += int(np.argmin(diffs)) == i  # upright again, it matches its own aligned original best
    assert np.median(rolls) == pytest.approx(-degrees, abs=5) and warned >= 4 and matched >= 5
    assert len(levelled) >= 5 and np.abs(np.median(levelled)) < 4


def test_small_dark_and_normal_faces_get_the_right_warnings(few):
    from celeba.faces import find_faces
    from celeba.framings import framings

    make = framings()
    small = [find_faces(make["low_res"](rgb, i)) for i, rgb in enumerate(few[:6])]
    assert sum(any(w.startswith("small_face") for w in f[0].warnings) for f in small if f) >= 5
    dark = [find_faces(make["dark"](rgb, i)) for i, rgb in enumerate(few[:6])]
    assert sum(any(w.startswith("dark") for w in f[0].warnings) for f in dark if f) >= 5
    normal = [find_faces(make["photo"](rgb, i)) for i, rgb in enumerate(few[:6])]
    assert sum(not f[0].warnings for f in normal if f) >= 5


def test_haar_fallback_and_the_haar_only_path(few, monkeypatch):
    import celeba.faces as faces

    photo = faces.find_faces(few[1], detector="haar")
    assert photo and photo[0].method == "haar+framing" and photo[0].landmarks is None
    assert photo[0].warnings[0].startswith("no_landmarks")
    monkeypatch.setattr(faces, "detect_landmarks", lambda rgb: [])  # BlazeFace finds nothing: Haar steps in
    assert faces.find_faces(few[1])[0].method == "haar+framing"


def test_find_faces_finds_nothing_in_blank_or_noise():
    from celeba.faces import find_faces

    assert find_faces(np.full((300, 300, 3), 128, np.uint8)) == []
    noise = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    assert find_faces(noise) == []


@pytest.mark.parametrize(
    "orientation, stored_as",
    [(6, Image.Transpose.ROTATE_90), (8, Image.Transpose.ROTATE_270), (3, Image.Transpose.ROTATE_180)],
)
def test_exif_orientation_turns_the_photo_upright_in_the_right_direction(few, orientation, stored_as):
    """A phone stores the sensor image and an EXIF tag saying how to turn it. Orientation 6 means: turn 90 degrees
    clockwise to view, so the stored pixels are the upright photo turned 90 degrees counter-clockwise (PIL's
    ROTATE_90). Decoding must give back the upright photo (not its mirror or a 180-degree turn) with a level,
    upright face."""
    import io

    from celeba.faces import find_faces
    from celeba.predict import decode_photo

    upright = few[1]
    stored = Image.fromarray(upright).transpose(stored_as)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    stored.save(buf, "JPEG", quality=95, exif=exif)
    rgb = decode_photo(buf.getvalue(), "phone.jpg")
    assert rgb.shape == upright.shape
    right = np.abs(rgb.astype(float) - upright).mean()
    wrong = min(
        np.abs(rgb.astype(float) - np.rot90(upright, 2)).mean(), np.abs(rgb.astype(float) - upright[::-1]).mean()
    )
    assert right < 5 < wrong
    face = find_faces(rgb)[0]
    assert abs(face.roll) < 10 and face.landmarks[3, 1] > face.landmarks[0, 1]  # mouth below the eyes


def test_cli_json_and_csv_carry_the_face_fields(tiny_model, few, tmp_path, capsys):
    import json

    from celeba.cli import predict_main
    from celeba.framings import tight

    def main(argv: list[str]) -> None:  # through the CLI layer, expecting exit code 0
        with pytest.raises(SystemExit) as exit_info:
            predict_main(argv)
        assert exit_info.value.code == 0

    Image.fromarray(tight(few[1], 0.9)).save(tmp_path / "tight.png")
    main([str(tmp_path / "tight.png"), "--model", str(tiny_model), "--json"])
    captured = capsys.readouterr()
    face = json.loads(captured.out)[0]["faces"][0]
    assert face["method"] == "blazeface+align" and face["partial_face"] is False  # complete, though tight
    assert set(face["landmarks"]) == {"left_eye", "right_eye", "nose", "mouth"} and 0 < face["score"] <= 1
    assert any(w.startswith("tight_crop") for w in face["warnings"])
    assert "outside what the model was trained on" in captured.err
    main([str(tmp_path / "tight.png"), "--model", str(tiny_model), "--csv"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "file,face,x,y,w,h,Male,Young,labels,method,partial_face,warnings"
    fields = lines[1].split(",")
    assert fields[-3:-1] == ["blazeface+align", "False"] and "tight_crop" in fields[-1].split()

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from celeba.cli import predict_main
from celeba.data import image_dir, load_index, split
from celeba.flags import parse_config
from celeba.predict import (
    ImageError,
    ImageTooLarge,
    PredictConfig,
    Predictor,
    decode_photo,
    image_files,
    read_photo,
    results_table,
)


def _encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def sample_paths(sample_dir):
    return sorted(image_dir(sample_dir).glob("*.jpg"))


@pytest.fixture(scope="module")
def predictor(tiny_model):
    return Predictor(tiny_model)


# --------------------------------------------------------------------------- reading images


def test_jpeg_decodes_exactly_like_the_training_pipeline(sample_paths):
    from celeba.data import decode_image

    data = sample_paths[0].read_bytes()
    assert np.array_equal(decode_photo(data, "x.jpg"), decode_image(data).numpy())


@pytest.mark.parametrize(
    "mode, fmt", [("L", "PNG"), ("RGBA", "PNG"), ("P", "GIF"), ("RGB", "WEBP"), ("I;16", "PNG"), ("CMYK", "TIFF")]
)
def test_grayscale_rgba_palette_and_other_formats_become_rgb(mode, fmt):
    image = Image.new(mode, (40, 30))
    rgb = decode_photo(_encode(image, fmt), f"x.{fmt.lower()}")
    assert rgb.shape == (30, 40, 3) and rgb.dtype == np.uint8


def test_exif_orientation_makes_phone_photos_upright():
    image = Image.new("RGB", (40, 30), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 90 degrees clockwise to view
    rgb = decode_photo(_encode(image, "JPEG", exif=exif), "phone.jpg")
    assert rgb.shape == (40, 30, 3)


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty file"),
        (b"hello, I am a text file", "not an image"),
        (b"\xff\xd8\xff\xe0 truncated jpeg", "image"),
    ],
)
def test_bad_bytes_give_clear_errors_naming_the_file(data, message):
    with pytest.raises(ImageError, match=f"bad.jpg: .*{message}"):
        decode_photo(data, "bad.jpg")


def test_truncated_real_jpeg_is_an_error(sample_paths):
    data = sample_paths[0].read_bytes()
    with pytest.raises(ImageError) as error:
        decode_photo(data[: len(data) // 3], "cut.jpg")
    assert str(error.value) == "cut.jpg: not a decodable image (corrupt JPEG data)"  # not TensorFlow's graph dump


def test_size_limits_are_checked_before_decoding(tmp_path, sample_paths):
    data = sample_paths[0].read_bytes()
    with pytest.raises(ImageTooLarge, match="MB limit"):
        decode_photo(data, "x.jpg", max_bytes=len(data) - 1)
    huge = _encode(Image.new("L", (8000, 6000)), "PNG")  # 48 megapixels in well under a megabyte
    assert len(huge) < 1_000_000
    with pytest.raises(ImageTooLarge, match="48.0 megapixels is over the 40 megapixel limit"):
        decode_photo(huge, "huge.png")
    big = tmp_path / "big.jpg"
    big.write_bytes(data)
    with pytest.raises(ImageTooLarge, match="big.jpg"):
        read_photo(big, max_bytes=1000)


def test_image_files_expands_folders_and_rejects_missing_paths(tmp_path, sample_paths):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.JPG").write_bytes(sample_paths[0].read_bytes())
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "empty").mkdir()
    files, empty = image_files([tmp_path, tmp_path / "empty"])
    assert files == [tmp_path / "sub" / "a.JPG"] and len(empty) == 1
    assert empty[0].startswith(f"{tmp_path / 'empty'}: no image files (.bmp .gif .jpeg .jpg")
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        image_files([tmp_path / "nope.jpg"])


def test_paths_are_positionals_anywhere_among_the_flags():
    cfg = parse_config(PredictConfig, ["a.jpg", "--model", "m.keras", "--json", "photos/", "--threshold", "0.3"])
    assert cfg.paths == (Path("a.jpg"), Path("photos")) and cfg.model == Path("m.keras") and cfg.threshold == 0.3
    assert cfg.output_format == "json" and parse_config(PredictConfig, []).paths == ()


# --------------------------------------------------------------------------- the model


def test_no_detect_matches_the_evaluation_pipeline(predictor, tiny_model, sample_dir):
    """An aligned CelebA image through predict --no-detect gets the same probabilities as in evaluation."""
    from celeba.model import dataset_probabilities, load_model

    rows = split(load_index(sample_dir), "test", 8)
    model, labels = load_model(tiny_model)
    expected = dataset_probabilities(model, rows, labels, predictor.image_size, batch_size=8)
    faces = predictor.score_photos([read_photo(p) for p in rows["path"]], detect=False)
    got = np.array([[f[0].probabilities[label] for label in labels] for f in faces])
    np.testing.assert_allclose(got, expected, atol=1e-4)  # results are rounded to 4 decimals
    assert faces[0][0].box.as_dict() == {"x": 0, "y": 0, "w": 178, "h": 218}


def test_every_face_in_a_group_photo_is_found_and_scored(predictor, sample_paths):
    photo = np.full((400, 700, 3), 100, np.uint8)
    a, b = (np.asarray(Image.open(p).convert("RGB")) for p in sample_paths[1:3])
    photo[100:318, 40:218], photo[150:368, 450:628] = a, b
    faces = predictor.score_photos([photo, np.full((200, 200, 3), 128, np.uint8)])
    assert len(faces[1]) == 0  # no face: an empty list, not an error
    lefts = sorted(face.box.x for face in faces[0])
    assert len(lefts) == 2 and lefts[0] < 218 < 450 <= lefts[1] + 60
    for face in faces[0]:
        assert set(face.probabilities) == set(predictor.labels)
        assert all(0 <= p <= 1 for p in face.probabilities.values())
    result = predictor.result("group.jpg", photo, faces[0])
    assert result["width"] == 700 and len(result["faces"]) == 2
    table = results_table([result], predictor.labels)
    assert list(table.columns[:6]) == ["file", "face", "x", "y", "w", "h"] and len(table) == 2


# --------------------------------------------------------------------------- the command


def run_main(argv: list[str]) -> None:
    """`predict` through the CLI layer, expecting success (exit code 0)."""
    with pytest.raises(SystemExit) as exit_info:
        predict_main(argv)
    assert exit_info.value.code == 0


def test_cli_json_csv_and_bad_files(tiny_model, sample_paths, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    for path in sample_paths[:3]:
        (folder / path.name).write_bytes(path.read_bytes())
    run_main([str(folder), "--model", str(tiny_model), "--no-detect", "--json", "--batch-size", "2"])
    results = json.loads(capsys.readouterr().out)
    assert [r["file"] for r in results] == [str(folder / p.name) for p in sample_paths[:3]]
    assert all(len(r["faces"]) == 1 for r in results)

    run_main([str(folder / sample_paths[1].name), "--model", str(tiny_model), "--csv"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("file,face,x,y,w,h,Male,Young,labels,") and len(lines) == 2  # one face

    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"")
    with pytest.raises(SystemExit) as exit_info:
        predict_main([str(bad), str(folder), "--model", str(tiny_model), "--no-detect"])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert f"error: {bad}: empty file" in captured.err
    assert captured.out.count(".jpg") == 3  # the good images still get their rows


def test_an_empty_folder_is_an_error_not_silence(tiny_model, sample_paths, tmp_path):
    """`predict empty/` used to exit 0 and print nothing: a fresh process shows what a user sees."""
    import os
    import subprocess
    import sys

    from celeba.config import REPO_ROOT

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    result = subprocess.run(
        [sys.executable, "-m", "celeba", "predict", str(empty), "--model", str(tiny_model)],
        cwd=REPO_ROOT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2 and result.stdout == "", result.stderr
    assert result.stderr.splitlines()[-1].startswith(f"error: {empty}: no image files (.bmp"), result.stderr


def test_an_empty_folder_beside_photos_is_reported_and_the_photos_scored(tiny_model, sample_paths, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        predict_main([str(tmp_path / "empty"), str(sample_paths[0]), "--model", str(tiny_model), "--no-detect"])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert f"error: {tmp_path / 'empty'}: no image files" in captured.err and sample_paths[0].name in captured.out


def test_cli_missing_model_is_one_clear_line(tmp_path, sample_paths, capsys):
    with pytest.raises(SystemExit) as exit_info:
        predict_main([str(sample_paths[0]), "--model", str(tmp_path / "none.keras")])
    assert exit_info.value.code == 2
    assert "none.keras: model file not found" in capsys.readouterr().err


def test_predict_tta_averages_a_face_with_its_mirror(lopsided_model):
    """Predictor(tta=True): each crop's probabilities are the mean of the plain model's for it and its mirror;
    a mirrored crop then scores the same as the crop itself."""
    rng = np.random.default_rng(5)
    crop = rng.integers(0, 256, (218, 178, 3), dtype=np.uint8)
    mirror = np.ascontiguousarray(crop[:, ::-1])
    tta = Predictor(lopsided_model, tta=True)
    plain = Predictor(lopsided_model).probabilities([crop, mirror])
    both = tta.probabilities([crop, mirror])
    np.testing.assert_allclose(both[0], plain.mean(axis=0), atol=1e-5)
    np.testing.assert_allclose(both[0], both[1], atol=1e-5)
    assert np.abs(plain[0] - plain[1]).max() > 1e-4  # the plain model is not mirror-invariant, so the test can fail

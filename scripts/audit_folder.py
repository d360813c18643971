"""Build a labelled folder of photos from aligned CelebA images, for `analyze --images` demos and tests.

Every aligned image is pasted, enlarged, into a larger grey photo (so `analyze` must find and re-frame the face like
`predict` does) and renamed `photo_NNNNN.jpg`. Every second photo is 'dim': darkened and blurred, so the model's
error rate there is higher by construction. The CSV has `file`, the CelebA truth of --attributes, the group column
`lighting` (normal / dim) and the numeric group column `face_px` (the pasted face width, binned by `analyze`).
`--extras` adds a photo without a face, a photo with two faces and an unreadable file.

    python scripts/audit_folder.py --data-dir ../shared/data/celeba --partition test --limit 1000 --out audit-photos
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from celeba.data import SAMPLE_DIR, load_index, split  # noqa: E402

ATTRIBUTES = ("Male", "Young", "Eyeglasses")


def paste(rgb: np.ndarray, scale: float = 1.5) -> np.ndarray:
    """The aligned image, enlarged `scale` times, on a larger grey photo: the face must be found again."""
    from PIL import Image

    h, w = rgb.shape[:2]
    big = np.asarray(Image.fromarray(rgb).resize((int(w * scale), int(h * scale)), Image.BICUBIC))
    photo = np.full((int(h * scale * 1.8), int(w * scale * 2.2), 3), 110, np.uint8)
    top, left = int(h * scale * 0.4), int(w * scale * 0.6)
    photo[top : top + big.shape[0], left : left + big.shape[1]] = big
    return photo


def dim(rgb: np.ndarray, brightness: float = 0.3, blur: float = 3.0) -> np.ndarray:
    """Darkened and blurred: a bad phone photo at night."""
    from PIL import Image, ImageEnhance, ImageFilter

    image = Image.fromarray(rgb).filter(ImageFilter.GaussianBlur(blur))
    return np.asarray(ImageEnhance.Brightness(image).enhance(brightness))


def make_audit_folder(
    rows: pd.DataFrame,
    out: Path,
    attributes: Sequence[str] = ATTRIBUTES,
    seed: int = 0,
    extras: bool = False,
    brightness: float = 0.3,
    blur: float = 3.0,
) -> Path:
    """Photos and labels.csv under `out` from CelebA index rows; returns the CSV path."""
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    records = []
    for i, row in enumerate(rows.itertuples(index=False)):
        rgb = np.asarray(Image.open(row.path).convert("RGB"))
        lighting = "dim" if i % 2 else "normal"
        scale = float(rng.uniform(1.2, 1.8))
        photo = paste(dim(rgb, brightness, blur) if lighting == "dim" else rgb, scale)
        name = f"photo_{i:05d}.jpg"
        Image.fromarray(photo).save(out / name, quality=92)
        records.append(
            {
                "file": name,
                **{a: int(getattr(row, a)) for a in attributes},
                "lighting": lighting,
                "face_px": round(rgb.shape[1] * scale),
            }
        )
    if extras:
        Image.new("RGB", (400, 300), (90, 120, 150)).save(out / "wall.jpg")  # no face
        first = np.asarray(Image.open(rows["path"].iloc[0]).convert("RGB"))
        second = np.asarray(Image.open(rows["path"].iloc[1]).convert("RGB"))
        Image.fromarray(np.concatenate([paste(first), paste(second)], axis=1)).save(out / "two.jpg", quality=92)
        (out / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
        truth = {a: int(rows[a].iloc[0]) for a in attributes}
        records += [
            {"file": f, **truth, "lighting": "normal", "face_px": 267} for f in ("wall.jpg", "two.jpg", "broken.jpg")
        ]
    path = out / "labels.csv"
    pd.DataFrame(records).to_csv(path, index=False)
    return path


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=SAMPLE_DIR)
    parser.add_argument("--partition", default="test")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--extras", action="store_true")
    args = parser.parse_args(argv)
    rows = split(load_index(args.data_dir), args.partition, args.limit)
    print(make_audit_folder(rows, args.out, extras=args.extras))


if __name__ == "__main__":
    main()

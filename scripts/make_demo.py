"""Make the demo photos in data/demo/ from the embedded CelebA sample (no other image ships with the repository).

    python scripts/make_demo.py            # writes data/demo/portrait.jpg, data/demo/pair.jpg and data/demo/README.md

Each photo is one or two aligned CelebA test images, enlarged 1.5x and pasted on a plain background, so `predict`
has to find the faces and re-crop them as it does for any photo. The images are the first of their cohort in the
sample's test partition (never trained on) whose face the detector finds; which ones, and their CelebA labels, are
written to data/demo/README.md.
CelebA's images are for non-commercial research only (see the CelebA agreement); so are these derived photos.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from celeba.data import SAMPLE_DIR, load_index, split

ROOT = Path(__file__).resolve().parent.parent
SCALE = 1.5
BACKGROUND = (118, 124, 131)  # a plain grey-blue wall


def first(rows, male: int, young: int) -> str:
    """The first test image of a Male x Young cohort whose face the detector finds once pasted (the sample's order).

    The demo shows the photo path of `predict`; a face the detector misses would show nothing.
    """
    import numpy as np

    from celeba.faces import detect_faces

    match = rows[(rows["Male"] == male) & (rows["Young"] == young)]
    for path in match["path"]:
        if len(detect_faces(np.asarray(compose([str(path)])))) == 1:
            return str(path)
    raise SystemExit(f"no detectable face in the Male={male} Young={young} test images of the sample")


def compose(paths: list[str]) -> Image.Image:
    """Faces side by side on a background, each enlarged SCALE times, with margins like a snapshot."""
    faces = [Image.open(p).convert("RGB") for p in paths]
    faces = [f.resize((int(f.width * SCALE), int(f.height * SCALE)), Image.BICUBIC) for f in faces]
    w, h = faces[0].size
    photo = Image.new("RGB", (int(w * (0.5 + 1.3 * len(faces))), int(h * 1.6)), BACKGROUND)
    for k, face in enumerate(faces):
        photo.paste(face, (int(w * (0.4 + 1.3 * k)), int(h * 0.3)))
    return photo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "data" / "demo", help="output folder (default: data/demo)")
    args = parser.parse_args()
    rows = split(load_index(SAMPLE_DIR), "test")
    demos = {"portrait.jpg": [first(rows, 1, 1)], "pair.jpg": [first(rows, 0, 1), first(rows, 1, 0)]}
    args.out.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Demo photos",
        "",
        "Made by `python scripts/make_demo.py` from test-partition images of the embedded CelebA sample",
        "(`data/celeba-sample/`), each enlarged 1.5x and pasted on a plain background, so that `predict` has to",
        "find and re-crop the faces. **Licence: CelebA's images are available for non-commercial research",
        "purposes only** (the CelebA dataset agreement); these derived photos carry the same terms.",
        "",
        "| photo | faces, left to right: CelebA image (Male, Young) |",
        "| --- | --- |",
    ]
    by_path = rows.set_index("path")
    for name, paths in demos.items():
        compose(paths).save(args.out / name, quality=92)
        faces = ", ".join(
            f"{Path(p).name} (Male {int(by_path.at[p, 'Male'])}, Young {int(by_path.at[p, 'Young'])})" for p in paths
        )
        lines.append(f"| `{name}` | {faces} |")
    (args.out / "README.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {', '.join(demos)} and README.md in {args.out}")


if __name__ == "__main__":
    main()

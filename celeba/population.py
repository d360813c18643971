"""Shared words about who is in a population: the age bands and the face status of a photo.

The lowest layer (no import from the project): `config`, `sources`, `analysis` and `leap_binder` all use these, so
they live apart from every module that reads or scores photos.
"""

from __future__ import annotations

import pandas as pd

#: Age bands every report and split uses (years; the last is open): children stay visible, unlike quantile bins.
AGE_BANDS = ((0, 4), (5, 12), (13, 17), (18, 29), (30, 44), (45, 59), (60, 200))

#: The face status of every analysed row: an aligned CelebA crop, or what face detection found in a photo.
ALIGNED, ONE_FACE, SEVERAL_FACES, NO_FACE, UNREADABLE = "aligned", "one face", "several faces", "no face", "unreadable"
SCORED = (ALIGNED, ONE_FACE, SEVERAL_FACES)  # several faces: the largest is scored, and the photo is flagged


def age_band(age: pd.Series) -> pd.Series:
    """'0-4', '5-12', ..., '60+' for numeric ages; NaN stays NaN."""
    edges = [lo for lo, _ in AGE_BANDS] + [AGE_BANDS[-1][1] + 1]
    names = [f"{lo}-{hi}" for lo, hi in AGE_BANDS[:-1]] + [f"{AGE_BANDS[-1][0]}+"]
    return pd.cut(pd.to_numeric(age, errors="coerce"), edges, right=False, labels=names)

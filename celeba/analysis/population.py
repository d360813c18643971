"""What an analysis looks at: one row per photo with its true labels and its groups.

Two sources give the same `Population`: a CelebA folder (aligned crops, groups = attribute values) and any labelled
folder of photos (`--images DIR` with `--labels-csv FILE` or `--filename-pattern`), where faces are found and
aligned like `predict` does it and the groups are the user's own columns. Reading files, no model, no TensorFlow.
"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from celeba.data import ATTRIBUTES, CelebADataError, load_index, split
from celeba.metrics import cohort_names
from celeba.population import AGE_BANDS

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
UNKNOWN = "unknown"  # the group of a row whose group value is missing: listed, never dropped
#: The first age of every band an `age` group column is cut into: the project's age bands (`celeba.sources`, the
#: ones training and Tensorleap use), fixed so that children stay visible (quantiles of adult-heavy data would
#: fold them into an `0-25` bin). `--age-bands` gives others.
AGE_BAND_STARTS = tuple(lo for lo, _ in AGE_BANDS)
AGE_COLUMN = "age"  # the group column, by name (any case), cut into age bands instead of quantiles


@dataclass
class Population:
    """Rows to analyse: `path`, one float column per known label (1, 0, NaN = unknown) and string group columns."""

    rows: pd.DataFrame
    groups: tuple[str, ...]  # group columns; the first is the primary grouping (balancing threshold, Grad-CAM)
    pairs: tuple[tuple[str, str], ...]  # pairs of group columns crossed into joint groups
    derivations: dict[str, str]  # label -> where its truth comes from, printed next to the numbers
    source: str  # one line: what was read
    detect: bool  # True: photos, faces found and aligned like `predict`; False: aligned CelebA crops
    train: pd.DataFrame | None = None  # CelebA's training partition (for the training-distribution table)
    skipped: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["file", "reason"]))
    celeba_pairs: tuple[tuple[str, str], ...] = ()  # attribute pairs with 2x2 CelebA cohort tables


# --------------------------------------------------------------------------- CelebA


def celeba_population(
    data_dir: Path, partition: str, limit: int | None, pairs: Sequence[tuple[str, str]], check_images: bool = False
) -> Population:
    """A CelebA partition; groups are the attributes of `pairs` ('Male' / 'Not Male') and their 2x2 cohorts."""
    index = load_index(data_dir, check_images=check_images)
    rows = split(index, partition, limit)
    if rows.empty:
        raise CelebADataError(f"{data_dir}: no {partition} images")
    attributes = list(dict.fromkeys(a for pair in pairs for a in pair))
    groups = pd.DataFrame(
        {a: pd.Categorical(cohort_names(rows, [a]), [a, f"Not {a}"], ordered=True) for a in attributes}
    )
    frame = pd.concat(
        [rows[["image_id", "path", *ATTRIBUTES]].astype({a: float for a in ATTRIBUTES}), groups.add_prefix("group:")],
        axis=1,
    )
    return Population(
        rows=frame,
        groups=tuple(attributes),
        pairs=tuple(pairs),
        derivations={a: "CelebA annotation (a human judgement)" for a in ATTRIBUTES},
        source=f"{data_dir} ({partition}, {len(rows)} images)",
        detect=False,
        train=split(index, "train"),
        celeba_pairs=tuple(pairs),
    )


# --------------------------------------------------------------------------- any labelled folder


def parse_derive(spec: str) -> tuple[str, str]:
    """'Young=age<30' -> ('Young', 'age<30'); the label must be a CelebA attribute a model can output."""
    name, sep, expression = spec.partition("=")
    name, expression = name.strip(), expression.strip()
    if not sep or not name or not expression:
        raise CelebADataError(f"--derive {spec!r}: expected LABEL=EXPRESSION, e.g. Young=age<30")
    if name not in ATTRIBUTES:
        raise CelebADataError(f"--derive {spec!r}: {name!r} is not a CelebA attribute (e.g. Male, Young)")
    return name, expression


def parse_mapping(spec: str) -> tuple[str, dict[str, str]]:
    """'gender:0=male,1=female' -> ('gender', {'0': 'male', '1': 'female'}): readable names for group values."""
    column, sep, pairs = spec.partition(":")
    try:
        mapping = {k.strip(): v.strip() for k, v in (item.split("=", 1) for item in pairs.split(","))}
    except ValueError:
        mapping = {}
    if not sep or not column.strip() or not mapping:
        raise CelebADataError(f"--map {spec!r}: expected COLUMN:VALUE=NAME,..., e.g. gender:0=male,1=female")
    return column.strip(), mapping


def pattern_regex(pattern: str) -> re.Pattern[str]:
    """'{age}_{gender}_{race}_*.jpg' -> a regex with one named group per field; '*' matches anything."""
    fields = re.findall(r"\{(\w+)\}", pattern)
    if not fields or len(set(fields)) != len(fields):
        raise CelebADataError(f"--filename-pattern {pattern!r}: needs distinct fields like {{age}}_{{gender}}_*.jpg")
    parts = re.split(r"(\{\w+\}|\*)", pattern)
    regex = "".join(
        f"(?P<{p[1:-1]}>[^/]+?)" if p.startswith("{") else ".*" if p == "*" else re.escape(p) for p in parts
    )
    return re.compile(regex + r"\Z", re.IGNORECASE)


def _image_files(folder: Path) -> list[str]:
    if not folder.is_dir():
        raise CelebADataError(f"{folder}: image folder not found")
    return sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    )


def read_labels_csv(path: Path) -> pd.DataFrame:
    """The user's table: a `file` column (relative to the image folder) and any other columns, as text."""
    if not Path(path).is_file():
        raise CelebADataError(f"{path}: labels CSV not found")
    try:
        with open(path, encoding="utf-8", newline="") as f:
            widths = [len(row) for row in csv.reader(f)]
        # index_col=False: pandas would take a first row with an extra field as a sign that the first column
        # is an index, and read every row shifted by one column.
        table = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True, index_col=False)
    except pd.errors.EmptyDataError:
        raise CelebADataError(f"{path}: empty file (a labels CSV starts with a header row: file,...)") from None
    except (pd.errors.ParserError, UnicodeDecodeError, csv.Error) as exc:
        raise CelebADataError(f"{path}: not a readable CSV ({exc})") from None
    except OSError as exc:  # no read permission, a folder
        raise CelebADataError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    wide = [(line, n) for line, n in enumerate(widths, 1) if n > widths[0]]
    if wide:
        raise CelebADataError(f"{path}: line {wide[0][0]} has {wide[0][1]} fields, the header {widths[0]}")
    if "file" not in table.columns:
        raise CelebADataError(f"{path}: no 'file' column (columns: {', '.join(table.columns)})")
    duplicated = table["file"][table["file"].duplicated()]
    if len(duplicated):
        raise CelebADataError(f"{path}: file {duplicated.iloc[0]!r} has more than one row")
    return table


def files_from_pattern(files: Sequence[str], pattern: str) -> tuple[pd.DataFrame, list[str]]:
    """(one row per matching file with its fields as text, the files whose name does not match)."""
    regex = pattern_regex(pattern)
    rows, unmatched = [], []
    for file in files:
        match = regex.match(Path(file).name)
        if match:
            rows.append({"file": file, **match.groupdict()})
        else:
            unmatched.append(file)
    return pd.DataFrame(rows, columns=["file", *regex.groupindex]), unmatched


def _numeric(column: pd.Series) -> pd.Series | None:
    """The column as numbers when every non-empty value is one, else None."""
    present = column.replace("", np.nan).dropna()
    values = pd.to_numeric(present, errors="coerce")
    if present.empty or values.isna().any():
        return None
    return pd.to_numeric(column.replace("", np.nan), errors="coerce")


def truth_column(column: pd.Series, name: str, source: str) -> pd.Series:
    """A label column: '1'/'0' (also 1.0, true/false, yes/no) -> 1.0/0.0, empty -> NaN; anything else is an error."""
    words = {"1": 1.0, "0": 0.0, "1.0": 1.0, "0.0": 0.0, "true": 1.0, "false": 0.0, "yes": 1.0, "no": 0.0, "": np.nan}
    values = column.str.strip().str.lower().map(words)
    bad = column[values.isna() & (column.str.strip() != "")]
    if len(bad):
        raise CelebADataError(
            f"{source}: column {name!r} must be 0, 1 or empty; row {bad.index[0] + 2} is {bad.iloc[0]!r}"
        )
    return values.astype(float)


def derive_label(table: pd.DataFrame, expression: str, spec: str) -> pd.Series:
    """Evaluate 'age<30' on the numeric view of the table; a row missing any column used is unknown (NaN)."""
    numeric = pd.DataFrame({c: v for c in table.columns if (v := _numeric(table[c])) is not None})
    frame = table.replace("", np.nan).assign(**numeric)
    used = [c for c in frame.columns if re.search(rf"\b{re.escape(c)}\b", expression)]
    if not used:
        raise CelebADataError(f"--derive {spec!r}: names no column of the table ({', '.join(table.columns)})")
    try:
        result = frame.eval(expression)
    except NotImplementedError as exc:  # pandas' eval lacks some Python syntax: `a if b else c`, `<<`
        raise CelebADataError(
            f"--derive {spec!r}: cannot evaluate ({exc}); use comparisons (< <= == != >= >), arithmetic, "
            "and & | ~ for and, or, not"
        ) from None
    except (SyntaxError, ValueError, TypeError, NameError, KeyError, AttributeError) as exc:  # bad user input
        raise CelebADataError(f"--derive {spec!r}: cannot evaluate ({type(exc).__name__}: {exc})") from None
    if not isinstance(result, pd.Series) or result.dtype != bool:
        raise CelebADataError(f"--derive {spec!r}: must be a true/false condition such as age<30")
    return result.astype(float).where(frame[used].notna().all(axis=1))


def group_column(
    column: pd.Series,
    bins: int,
    mapping: dict[str, str] | None = None,
    age_starts: Sequence[float] | None = None,
) -> pd.Series:
    """Values -> ordered string categories: mapped names, or age bands (`age_starts`, for an age column), or
    quantile bins of a numeric column with more than `bins` distinct values, or the values themselves; missing ->
    'unknown'."""
    if mapping:
        names = column.map(lambda v: mapping.get(v, v) if v != "" else UNKNOWN)
        order = [*dict.fromkeys(mapping.values()), *sorted(set(names) - set(mapping.values()) - {UNKNOWN}), UNKNOWN]
        return pd.Series(pd.Categorical(names, [o for o in order if o in set(names)], ordered=True), index=column.index)
    numeric = _numeric(column)
    if numeric is not None and age_starts is not None:
        return age_bands(numeric, age_starts)
    if numeric is not None and numeric.nunique() > bins:
        return quantile_bins(numeric, bins)
    values = column.replace("", UNKNOWN).astype(str)
    order = sorted(set(values), key=lambda v: (v == UNKNOWN, float(v) if _is_number(v) else np.inf, v))
    return pd.Series(pd.Categorical(values, order, ordered=True), index=column.index)


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def _short(x: float) -> str:
    return f"{x:.0f}" if float(x).is_integer() or abs(x) >= 10 else f"{x:.2f}"


def check_age_starts(starts: Sequence[float]) -> None:
    """Band starts must begin at 0 and increase (every age falls in exactly one band)."""
    if not starts or starts[0] != 0 or any(b <= a for a, b in zip(starts, starts[1:])):
        raise CelebADataError(
            f"--age-bands {' '.join(f'{s:g}' for s in starts)}: the first age of every band, from 0 and "
            f"increasing, e.g. {' '.join(map(str, AGE_BAND_STARTS))}"
        )


def age_bands(ages: pd.Series, starts: Sequence[float] = AGE_BAND_STARTS) -> pd.Series:
    """Ages -> ordered bands named by whole years ('0-4', '5-12', ..., '60+'), from each band's first age;
    bands nobody is in are left out; missing ages -> 'unknown'."""
    check_age_starts(starts)
    edges = [*starts, np.inf]
    names = [f"{lo:g}-{hi - 1:g}" if hi - lo > 1 else f"{lo:g}" for lo, hi in zip(starts, starts[1:])]
    names.append(f"{starts[-1]:g}+")
    banded = pd.cut(ages, edges, right=False, labels=names)
    text = banded.astype(object).where(banded.notna(), UNKNOWN)
    order = [n for n in names if (text == n).any()] + ([UNKNOWN] if (text == UNKNOWN).any() else [])
    return pd.Series(pd.Categorical(text, order, ordered=True), index=ages.index)


def quantile_bins(values: pd.Series, bins: int) -> pd.Series:
    """Quantile bins named 'low-high' in increasing order; missing values -> 'unknown'."""
    binned = pd.qcut(values, bins, duplicates="drop")
    span = values.groupby(binned, observed=False).agg(["min", "max"])  # the values' range, not qcut's padded edge
    names = [f"{_short(lo)}-{_short(hi)}" for lo, hi in zip(span["min"], span["max"])]
    if len(set(names)) < len(names):  # close bins: more digits, then numbered
        names = [f"{lo:.4g}-{hi:.4g}" for lo, hi in zip(span["min"], span["max"])]
        names = names if len(set(names)) == len(names) else [f"{k + 1}: {n}" for k, n in enumerate(names)]
    text = binned.cat.rename_categories(names).astype(object).where(binned.notna(), UNKNOWN)
    order = names + ([UNKNOWN] if (text == UNKNOWN).any() else [])
    return pd.Series(pd.Categorical(text, order, ordered=True), index=values.index)


def folder_population(
    images: Path,
    labels_csv: Path | None = None,
    filename_pattern: str | None = None,
    derive: Sequence[str] = (),
    mapping: Sequence[str] = (),
    bins: int = 5,
    limit: int | None = None,
    age_starts: Sequence[float] = AGE_BAND_STARTS,
) -> Population:
    """Any folder of photos with a truth table (CSV or file-name pattern): labels, derived labels and groups.

    Label columns are the columns named like a CelebA attribute (Male, Young, ...); every other column is a group
    (an `age` column is cut into the age bands starting at `age_starts`; other numeric ones with more than `bins`
    values into quantiles). The labels given as columns are groups too, so that e.g. Young is also reported per
    Male / Not Male; a derived label is not (its column, e.g. the age bands, already is).
    """
    check_age_starts(age_starts)
    images = Path(images)
    if (labels_csv is None) == (filename_pattern is None):
        raise CelebADataError("--images needs exactly one of --labels-csv FILE or --filename-pattern PATTERN")
    files = _image_files(images)
    skipped: list[dict[str, str]] = []
    if labels_csv is not None:
        table = read_labels_csv(labels_csv)
        on_disk = set(files)
        missing = ~table["file"].isin(on_disk)
        skipped += [
            {"file": f, "reason": f"in {Path(labels_csv).name} but not in {images}"} for f in table.loc[missing, "file"]
        ]
        unlisted = sorted(on_disk - set(table["file"]))
        if unlisted:
            log.info("%d image files in %s have no row in %s and are not analysed", len(unlisted), images, labels_csv)
        table = table[~missing].reset_index(drop=True)
        source = f"{images} with {labels_csv}"
    else:
        assert filename_pattern is not None  # exactly one of the two, checked above
        table, unmatched = files_from_pattern(files, filename_pattern)
        skipped += [{"file": f, "reason": f"name does not match {filename_pattern}"} for f in unmatched]
        source = f"{images}, labels from file names {filename_pattern}"
    if limit is not None:
        table = table.iloc[:limit]
    if table.empty:
        raise CelebADataError(f"{images}: no image with a row of labels ({len(skipped)} skipped)")

    maps = dict(parse_mapping(m) for m in mapping)
    unknown_maps = set(maps) - set(table.columns)
    if unknown_maps:
        raise CelebADataError(f"--map: no column {sorted(unknown_maps)} (columns: {', '.join(table.columns)})")
    derived = dict(parse_derive(d) for d in derive)
    given = [c for c in table.columns if c in ATTRIBUTES and c not in derived]
    truth = {c: truth_column(table[c], c, str(labels_csv or filename_pattern)) for c in given}
    truth |= {name: derive_label(table, expr, f"{name}={expr}") for name, expr in derived.items()}
    derivations = {c: f"column {c} of {Path(labels_csv).name}" if labels_csv else f"file-name field {c}" for c in given}
    derivations |= {name: f"derived: {name} := {expr}" for name, expr in derived.items()}

    group_names = [c for c in table.columns if c != "file" and c not in ATTRIBUTES]
    groups = {
        c: group_column(table[c], bins, maps.get(c), age_starts if c.lower() == AGE_COLUMN else None)
        for c in group_names
    }
    groups |= {
        c: pd.Series(
            pd.Categorical(
                np.select([truth[c] == 1, truth[c] == 0], [c, f"Not {c}"], UNKNOWN),
                [c, f"Not {c}", UNKNOWN],
                ordered=True,
            )
        ).cat.remove_unused_categories()
        for c in given
    }
    frame = pd.concat(
        [
            pd.DataFrame({"image_id": table["file"], "path": [str(images / f) for f in table["file"]]}),
            pd.DataFrame(truth),
            pd.DataFrame(groups).add_prefix("group:"),
        ],
        axis=1,
    )
    names = tuple(groups)
    return Population(
        rows=frame,
        groups=names,
        pairs=tuple((a, b) for i, a in enumerate(names) for b in names[i + 1 :]),
        derivations=derivations,
        source=f"{source} ({len(frame)} photos)",
        detect=True,
        skipped=pd.DataFrame(skipped, columns=["file", "reason"]),
    )


def group_values(population: Population, column: str) -> pd.Series:
    """The group of every row for one group column, or for a pair 'a x b' ('Male & Young')."""
    if " x " in column:
        a, b = column.split(" x ", 1)
        return group_values(population, a).astype(str) + " & " + group_values(population, b).astype(str)
    return population.rows[f"group:{column}"]


def add_groups(population: Population, columns: dict[str, pd.Series]) -> Population:
    """The population with more group columns (e.g. image-statistic bins) appended after the existing ones."""
    rows = population.rows.assign(
        **{f"group:{name}": values.set_axis(population.rows.index) for name, values in columns.items()}
    )
    return Population(**{**population.__dict__, "rows": rows, "groups": population.groups + tuple(columns)})

"""Write the flag tables in the docs from the config dataclasses, so the docs cannot drift from `--help`.

python scripts/flag_tables.py           # rewrite every table between <!-- flags: CMD --> and <!-- /flags -->
python scripts/flag_tables.py --check   # exit 1 if a table is out of date (tests/test_docs.py runs this)
"""

from __future__ import annotations

import argparse
import re
import sys
import typing
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from celeba.cli import COMMANDS  # noqa: E402
from celeba.config import _base_type  # noqa: E402
from celeba.flags import flag_fields, show_default  # noqa: E402

BLOCK = re.compile(r"(<!-- flags: (\w+) -->\n)(.*?)(<!-- /flags -->)", re.S)
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def flag_table(command: str) -> str:
    """A Markdown table of a command's flags: the same names, defaults and help as `celeba COMMAND --help`."""
    cls = COMMANDS[command].config()
    hints = typing.get_type_hints(cls)
    rows = ["| flag | default | what |", "| --- | --- | --- |"]
    if COMMANDS[command].replay is not None:
        rows.append(
            "| `--config RUN_CARD.json` | | replay a run: its run card's config is the default of every other flag; "
            "writes <name>-replay unless --name |"
        )
    for f in flag_fields(cls):
        kind, many = _base_type(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        if f.metadata.get("positional"):
            name = f"`{f.metadata.get('metavar', f.name.upper())} ...`"
        elif kind is bool:
            name = f"`{flag}` / `--no-{flag[2:]}`"
        elif typing.get_origin(kind) is typing.Literal:
            name = f"`{flag} {'|'.join(typing.get_args(kind))}{' ...' if many else ''}`".replace("|", "\\|")
        else:
            name = f"`{flag} {f.name.upper().rstrip('S') + ' ...' if many else f.name.upper()}`"
        default = f.metadata.get("none", "") if f.default is None else show_default(f.default)
        text = f.metadata["help"].replace("|", "\\|")
        rows.append(f"| {name} | {default.replace('|', chr(92) + '|')} | {text} |")
    return "\n".join(rows) + "\n"


def render(text: str) -> str:
    return BLOCK.sub(lambda m: m[1] + flag_table(m[2]) + m[4], text)


def stale() -> list[Path]:
    """The docs whose flag tables differ from the code."""
    return [path for path in DOCS if path.is_file() and render(path.read_text()) != path.read_text()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only check; exit 1 when a table is out of date")
    args = parser.parse_args()
    outdated = stale()
    if args.check:
        for path in outdated:
            print(f"{path.relative_to(ROOT)}: flag tables are out of date: run python scripts/flag_tables.py")
        sys.exit(1 if outdated else 0)
    for path in outdated:
        path.write_text(render(path.read_text()))
        print(f"updated {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

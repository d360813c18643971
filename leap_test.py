"""Everything code-loader can check locally: `LeapLoader.check_dataset()`, then the integration test on the
first samples of every partition. Prints a status table; exits non-zero on any failure.

    TL_DISABLE_ANALYTICS=true CELEBA_LEAP_MODEL=models/<model>.keras python leap_test.py [--samples N]
"""

import argparse
import os
import sys
import traceback
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

os.environ.setdefault("TL_DISABLE_ANALYTICS", "true")  # code-loader otherwise sends usage events (stalls offline)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parent
ENTRY_FILE = "leap_binder.py"


def check_dataset() -> Tuple[bool, List[Tuple[str, bool, str]], dict]:
    """Run code-loader's own dataset check; returns (valid, [(check, passed, detail)], the binder's globals)."""
    from code_loader import LeapLoader
    from code_loader.leaploader import global_leap_binder

    result = LeapLoader(str(ROOT), ENTRY_FILE).check_dataset()
    rows = [(payload.name, payload.is_passed, "; ".join(f"{k}: {v}" for k, v in payload.display.items()))
            for payload in result.payloads]
    if result.general_error:
        rows.append(("general", False, result.general_error))
    test_func = global_leap_binder.integration_test_func
    # LeapLoader executes the entry file as an anonymous module; the registered test's globals are that
    # module, so what follows runs the very functions code-loader checked (importing the file again would
    # register every decorator twice).
    binder = test_func.__globals__ if test_func is not None else {}
    return result.is_valid, rows, binder


def run_integration_tests(binder: dict, samples: int) -> List[Tuple[str, bool, str]]:
    """The decorated integration test on the first `samples` ids of every partition."""
    rows = []
    try:
        responses = binder["preprocess"]()
    except Exception as exc:  # already in check_dataset's table; say why nothing more ran
        return [("integration_test (not run: preprocess failed)", False, f"{type(exc).__name__}: {exc}")]
    for preprocess in responses:
        for sample_id in preprocess.sample_ids[:samples]:
            name = f"integration_test[{preprocess.state.value}:{sample_id}]"
            try:
                binder["integration_test"](sample_id, preprocess)
                rows.append((name, True, ""))
            except Exception as exc:  # report every failure, not just the first
                rows.append((name, False, "".join(traceback.format_exception_only(exc)).strip()))
    return rows


def print_table(rows: Sequence[Tuple[str, bool, str]]) -> None:
    width = max(len(name) for name, _, _ in rows)
    print(f"{'check'.ljust(width)} | status")
    print("-" * (width + 9))
    for name, passed, detail in rows:
        print(f"{name.ljust(width)} | {'pass' if passed else 'FAIL'}")
        if not passed and detail:
            print("    " + detail.replace("\n", "\n    "))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=2, help="integration-test samples per partition")
    args = parser.parse_args(argv)

    valid, rows, binder = check_dataset()
    if binder:
        rows += run_integration_tests(binder, args.samples)
    print_table(rows)
    ok = valid and bool(binder) and all(passed for _, passed, _ in rows)
    print(f"\n{'OK' if ok else 'FAILED'}: {sum(p for _, p, _ in rows)}/{len(rows)} checks passed")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""Survival per file of the last `make mutate` run (mutmut's results in mutants/), equivalent mutants excluded.

    python tools/mutation_report.py [FILE_GLOB ...]      # default: every mutated file that has results

Survival = (survived + no tests) / (mutants checked - equivalent ones), where "no tests" (no selected test
reaches the function) counts as a survivor and a timeout as a kill. The equivalent mutants are the names in
backquotes at the start of the list items of docs/MUTANTS.md, each with its reason. Prints a markdown table,
then every surviving mutant that is not listed there (`mutmut show NAME` prints its diff).
"""

from __future__ import annotations

import fnmatch
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MUTANTS = ROOT / "mutants"
EQUIVALENT_FILE = ROOT / "docs" / "MUTANTS.md"
# mutmut 3.8's exit codes (mutmut.stats.status_by_exit_code), kept here so the report needs no mutmut import
KILLED = {1, 3, 36, 24, -24, 152, 255, -11, -9}  # failed tests, pytest error, timeout, crash
SURVIVED, NO_TESTS, NOT_CHECKED = {0}, {5, 33}, {None, 2}
SKIPPED = {34, 37}


def equivalent_names(path: Path = EQUIVALENT_FILE) -> set[str]:
    """Mutant names listed as equivalent: list items starting with a backquoted name."""
    if not path.exists():
        return set()
    return set(re.findall(r"^\s*[-*] `([\w.]+__mutmut_\d+)`", path.read_text(encoding="utf-8"), re.M))


def results(globs: list[str]) -> dict[str, dict[str, int | None]]:
    """Source file (relative to src/) -> mutant name -> exit code, for files matching any of `globs`."""
    out = {}
    for meta in sorted((MUTANTS / "src").rglob("*.py.meta")):
        rel = str(meta.relative_to(MUTANTS / "src"))[: -len(".meta")]
        if globs and not any(fnmatch.fnmatch(rel, g) for g in globs):
            continue
        codes = json.loads(meta.read_text(encoding="utf-8"))["exit_code_by_key"]
        if codes and any(v is not None for v in codes.values()):
            out[rel] = codes
    return out


def main(argv: list[str]) -> int:
    if not MUTANTS.is_dir():
        print("no mutants/ folder: run `make mutate` first", file=sys.stderr)
        return 1
    equivalent = equivalent_names()
    table = results(argv)
    print("| file | mutants | killed | survived | no tests | not checked | equivalent | survival |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    left: list[str] = []
    for rel, codes in table.items():
        eq = {k for k in codes if k in equivalent}
        live = {k: v for k, v in codes.items() if k not in eq and v not in SKIPPED}
        killed = sum(v in KILLED for v in live.values())
        survived = [k for k, v in live.items() if v in SURVIVED]
        no_tests = [k for k, v in live.items() if v in NO_TESTS]
        unchecked = sum(v in NOT_CHECKED for v in live.values())
        checked = len(live) - unchecked
        rate = (len(survived) + len(no_tests)) / checked if checked else float("nan")
        print(f"| {rel} | {len(codes)} | {killed} | {len(survived)} | {len(no_tests)} | {unchecked} | {len(eq)} | "
              f"{100 * rate:.1f} % |")
        left += [f"{k} ({'survived' if k in survived else 'no tests'})" for k in sorted(survived + no_tests)]
    if left:
        print(f"\n{len(left)} surviving mutants not listed as equivalent in docs/MUTANTS.md:")
        print("\n".join(left))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

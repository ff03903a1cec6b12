"""``python -m bench [--quick] [--json FILE]``: every comparison, one table each."""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

from bench import hotpath, persist


def _table(title: str, rows: list[dict[str, object]]) -> str:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    cells = [[str(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = [title, "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer rounds and events")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    results = {
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "hot_path_ns_per_call": hotpath.run(rounds=40 if args.quick else 200),
        "sqlite_persistence": persist.run(n=20_000 if args.quick else 100_000),
    }
    print(_table("Request path, ns per call", results["hot_path_ns_per_call"]))
    print()
    print(_table("SQLite persistence", results["sqlite_persistence"]))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

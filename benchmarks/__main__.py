"""Run one benchmark: ``python -m benchmarks bigtag [--members N]``."""

from __future__ import annotations

import sys

from . import bigtag

BENCHMARKS = {"bigtag": bigtag.main}


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in BENCHMARKS:
        print("usage: python -m benchmarks {" + ",".join(BENCHMARKS) + "} [options]")
        return 2
    return BENCHMARKS[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())

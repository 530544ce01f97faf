"""``python -m benchmarks <command> [options]``:

- ``all [--quick]``: every contender and workload, side by side; results, plots, summary.
- ``run --contender X [--workload Y] [--scale quick|full] --json``: one contender.
- ``seed --scale quick|full --db bench_...``: fill a template database.
- ``bigtag [--members N]``: how long Redis is blocked invalidating one huge tag.
- ``capture [--rounds N]``: what automatic capture adds to a query on a miss.
- ``relay [--interval S] [--limit N]``: the ``ours_outbox`` relay (started by ``run``).
- ``changes [--quick]``: change data capture, commit -> invalidated and changes per second.
- ``local [--quick]``: the local cache (L1): a local hit, the cross-process window, shop
  traffic with and without it, memory per entry.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from importlib import import_module

BENCHMARKS: dict[str, str] = {
    "all": "benchmarks.orchestrate",
    "run": "benchmarks.run",
    "seed": "benchmarks.seed",
    "bigtag": "benchmarks.bigtag",
    "capture": "benchmarks.capture",
    "relay": "benchmarks.outbox_relay",
    "changes": "benchmarks.changes",
    "local": "benchmarks.local",
}


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in BENCHMARKS:
        print("usage: python -m benchmarks {" + ",".join(BENCHMARKS) + "} [options]")
        return 2
    entry: Callable[[list[str]], int] = import_module(BENCHMARKS[sys.argv[1]]).main
    return entry(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())

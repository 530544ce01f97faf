"""The workloads, each ``run(ctx) -> dict`` of JSON-ready figures; order is the run order."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import bulk, correctness, events, fanout, micro, mixed


def _without_capture(workload: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """The same workload for this app with ``get_or_set(capture=False)``; None for others."""

    def run(ctx: Any) -> Any:
        if not ctx.ours:
            return None
        ctx.contender.capture = False
        try:
            return workload(ctx)
        finally:
            ctx.contender.capture = True

    return run


def _mixed(write_ratio: float) -> Callable[[Any], Any]:
    return lambda ctx: mixed.run(ctx, write_ratio=write_ratio)


WORKLOADS: dict[str, Callable[[Any], Any]] = {
    "events": events.run,
    "micro": micro.run,
    "fanout": fanout.run,
    "bulk": bulk.run,
    "correctness": correctness.run,
    "correctness_nocapture": _without_capture(correctness.run),
    "mixed_95": _mixed(0.05),
    "mixed_95_nocapture": _without_capture(_mixed(0.05)),
    "mixed_80": _mixed(0.20),
    "mixed_80_nocapture": _without_capture(_mixed(0.20)),
}

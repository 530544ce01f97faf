"""``python -m benchmarks all [--quick]``: every contender, side by side, in one run.

Seeds one template database, then runs each contender in its own process
(``python -m benchmarks run --contender X --template ... --out ...``), so each has its own
settings, its own private redis-server and its own clone of the same data. Writes
``benchmarks/results/<scale>/<contender>.json`` and ``summary.rst``, draws the plots
(``docs/benchmarks/*.png`` for the full run; ``benchmarks/results/quick/`` for ``--quick``)
and prints the summary: the tables and every target's ratio and verdict.

Exit status 1 if a contender's run failed (the harness is broken); a contender whose library
is not installed is reported as skipped. Missed targets are reported, never an error.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from . import infra, report
from .contenders import NAMES
from .run import RESULTS, seed, workload_names

DOCS_PLOTS = infra.ROOT / "docs" / "benchmarks"


def stored(outdir: Path) -> dict[str, dict[str, Any]]:
    """The results an earlier run left in ``outdir``, by contender."""
    found = {}
    for contender in NAMES:
        path = outdir / f"{contender}.json"
        if path.exists():
            found[contender] = json.loads(path.read_text())
    return found


def merge(old: dict[str, Any] | None, new: dict[str, Any], some_workloads: bool) -> dict[str, Any]:
    """``new`` replaces ``old``, or, when only some workloads were re-run, updates them in it
    (noting when, and how busy the machine was, under ``reruns``)."""
    if not some_workloads or not old or "workloads" not in old or "workloads" not in new:
        return new
    old["workloads"].update(new["workloads"])
    old["seconds"].update(new["seconds"])
    old["scale"] = new["scale"]  # the current definition (the re-run used it)
    old.setdefault("reruns", []).append({
        "workloads": sorted(new["workloads"]), "loadavg": new.get("loadavg"),
        "versions": new.get("versions"), "at": time.strftime("%Y-%m-%d %H:%M:%S"),
    })
    return old


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    import platform

    found: dict[str, Any] = {"nproc": os.cpu_count(), "kernel": platform.release(),
                             "python": platform.python_version(), "loadavg": os.getloadavg()}
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            found["cpu"] = line.split(":", 1)[1].strip()
            break
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal"):
            found["memory_gib"] = round(int(line.split()[1]) / 1024 / 1024, 1)
    return found


def machine_text(found: dict[str, Any]) -> str:
    load = ", ".join(f"{x:.2f}" for x in found["loadavg"])
    return (f"Machine: {found['nproc']} CPUs ({found.get('cpu', '?')}), "
            f"{found.get('memory_gib', '?')} GiB, Linux {found['kernel']}, "
            f"Python {found['python']}; load average at the end: {load}\n")


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks all")
    parser.add_argument("--quick", action="store_true",
                        help="small data, seconds per workload: keeps the harness alive in CI")
    parser.add_argument("--contender", action="append", choices=NAMES,
                        help="repeatable; default: all seven")
    parser.add_argument("--workload", action="append", choices=workload_names(),
                        help="repeatable; default: all. With --contender or --workload, the "
                             "stored results of everything not re-run are kept and merged")
    parser.add_argument("--report", action="store_true",
                        help="run nothing: summary and plots from the stored results")
    parser.add_argument("--plots", type=Path,
                        help="where to write PNGs (default: docs/benchmarks for the full run)")
    args = parser.parse_args(argv)
    scale = "quick" if args.quick else "full"
    chosen = args.contender or list(NAMES)
    outdir = RESULTS / scale
    outdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    template = f"bench_tpl_{scale}_{os.getpid()}"
    partial = bool(args.contender or args.workload or args.report)
    results: dict[str, dict[str, Any]] = stored(outdir) if partial else {}
    failed: list[str] = []
    if args.report:
        chosen = []
    else:
        print(f"benchmarks: {scale} run of {', '.join(chosen)}", flush=True)
    try:
        if chosen:
            seed(scale, template)
        for contender in chosen:
            path = outdir / f"{contender}.json"
            fresh = outdir / f"{contender}.new.json"
            fresh.unlink(missing_ok=True)
            t0 = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-m", "benchmarks", "run", "--contender", contender,
                 "--scale", scale, "--template", template, "--out", str(fresh),
                 *(f"--workload={w}" for w in args.workload or ())],
                cwd=infra.ROOT, check=False,
            )
            if done.returncode != 0 or not fresh.exists():
                failed.append(contender)
                print(f"benchmarks: {contender} FAILED (exit {done.returncode})", flush=True)
                continue
            results[contender] = merge(results.get(contender), json.loads(fresh.read_text()),
                                       bool(args.workload))
            path.write_text(json.dumps(results[contender], indent=2, sort_keys=True) + "\n")
            fresh.unlink()
            note = results[contender].get("skipped")
            print(f"benchmarks: {contender} " + (f"skipped: {note}" if note else
                  f"done in {time.perf_counter() - t0:.1f}s"), flush=True)
    finally:
        if chosen:
            infra.drop_database(template)
    wall = time.perf_counter() - started
    text = machine_text(machine())
    for contender, result in results.items():
        for rerun in result.get("reruns", []):
            load = ", ".join(f"{x:.2f}" for x in (rerun.get("loadavg") or {}).get("before", []))
            text += (f"Re-run at {rerun['at']}: {contender} {', '.join(rerun['workloads'])} "
                     f"(load average before: {load})\n")
    text += "\n" + report.summary(results)
    plots_dir = args.plots or (DOCS_PLOTS if scale == "full" else outdir)
    try:
        from . import plots

        written = plots.write(results, plots_dir, f"{scale} run")
        text += "\nPlots: " + ", ".join(str(p.relative_to(infra.ROOT)) if p.is_relative_to(
            infra.ROOT) else str(p) for p in written) + "\n"
    except ImportError:
        text += "\nPlots: skipped, matplotlib is not installed (pip install -e '.[bench]')\n"
    if chosen:
        text += f"\nWall time: {wall:.0f} s ({scale} run)\n"
    (outdir / "summary.rst").write_text(text)
    (outdir / "machine.json").write_text(json.dumps(machine(), indent=2) + "\n")
    (outdir / "targets.json").write_text(json.dumps(report.targets(results), indent=2) + "\n")
    print()
    print(text)
    if failed:
        print(f"benchmarks: failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0

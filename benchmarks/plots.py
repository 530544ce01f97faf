"""PNG plots of a run (matplotlib, Agg backend): docs/benchmarks/*.png for the full run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .report import contenders, rows_for

COLORS = {"nocache": "#999999", "ttl": "#bbbb44", "cacheops": "#dd8844",
          "cachalot": "#aa66cc", "ours_sync": "#2277cc", "ours_celery": "#22aa88",
          "ours_outbox": "#cc3366"}


def write(results: dict[str, dict[str, Any]], outdir: Path, title: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    outdir.mkdir(parents=True, exist_ok=True)
    names = contenders(results)
    written = []
    for name, heading, draw in (
        ("mixed", "Shop traffic, Zipf popularity", _mixed),
        ("fanout", "Write fan-out", _fanout),
        ("correctness", "Concurrent readers vs the database", _correctness),
        ("window", "Inconsistency window", _window),
        ("ratios", "Baselines in the same process (red: targets for ours)", _ratios),
    ):
        fig = draw(plt, results, names)
        if fig is None:
            continue
        fig.suptitle(f"{heading} ({title})")
        fig.tight_layout()
        path = outdir / f"{name}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    return written


def _w(results: dict[str, Any], contender: str, workload: str) -> Any:
    return (results[contender].get("workloads") or {}).get(workload)


def _color(label: str) -> str:
    return COLORS[label.split(",")[0]]


def _bars(ax: Any, names: list[str], values: list[float | None], label: str) -> None:
    xs = range(len(names))
    bars = ax.bar(xs, [v or 0 for v in values], color=[_color(n) for n in names])
    for bar, name in zip(bars, names, strict=True):
        if "capture=False" in name:
            bar.set_hatch("//")
    ax.set_xticks(list(xs), [n.replace(", ", "\n") for n in names], rotation=30, ha="right",
                  fontsize=8)
    ax.set_title(label)


def _mixed(plt: Any, results: dict[str, Any], names: list[str]) -> Any:
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    for row, workload in enumerate(("mixed_95", "mixed_80")):
        ratio = "95/5" if workload == "mixed_95" else "80/20"
        rows = rows_for(results, workload)
        present = [label for label, _ in rows]
        data = [d for _, d in rows]
        _bars(axes[row][0], present, [d["throughput"] for d in data], f"{ratio}: requests/s")
        _bars(axes[row][1], present, [d["hit_rate"] * 100 for d in data],
              f"{ratio}: hit rate % (reads with no SQL)")
        _bars(axes[row][2], present, [d["read_latency"]["p99"] for d in data],
              f"{ratio}: read p99 ms")
    return fig


def _fanout(plt: Any, results: dict[str, Any], names: list[str]) -> Any:
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    for n in names:
        data = _w(results, n, "fanout")
        if not data:
            continue
        sizes = [s["entries"] for s in data["sizes"]]
        axes[0].plot(sizes, [s["write_ms"] for s in data["sizes"]], "o-", color=COLORS[n],
                     label=n)
        axes[1].plot(sizes, [max(s["redis_longest"]["ms"], 0.001) for s in data["sizes"]], "o-",
                     color=COLORS[n], label=n)
        window = [(s["entries"], s["window_ms"]) for s in data["sizes"] if s["window_ms"]]
        if window:
            axes[2].plot([w[0] for w in window], [w[1] for w in window], "o-", color=COLORS[n],
                         label=n)
    labels = ("save() ms (commit + inline work)", "longest single Redis command ms",
              "commit → invalidated ms")
    for ax, label in zip(axes, labels, strict=True):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("entries depending on the product")
        ax.set_title(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[1].axhline(10, color="red", linestyle="--", linewidth=1, label="10 ms target")
    axes[1].legend(fontsize=8)
    return fig


def _correctness(plt: Any, results: dict[str, Any], names: list[str]) -> Any:
    rows = rows_for(results, "correctness")
    if not rows:
        return None
    present = [label for label, _ in rows]
    data = [d for _, d in rows]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    xs = list(range(len(present)))
    axes[0].bar([x - 0.2 for x in xs], [d["stale_reads"] for d in data], width=0.4,
                color=[_color(n) for n in present], label="stale reads")
    axes[0].bar([x + 0.2 for x in xs], [d["stale_after_invalidation"] or 0 for d in data],
                width=0.4, color="black", label="after invalidation applied")
    axes[0].set_xticks(xs, [n.replace(", ", "\n") for n in present], rotation=30, ha="right",
                       fontsize=8)
    axes[0].set_title("stale reads")
    axes[0].set_yscale("symlog")
    axes[0].legend(fontsize=8)
    _bars(axes[1], present, [d["stale_age"]["max"] for d in data], "oldest stale read, ms")
    axes[1].set_yscale("symlog")
    return fig


def _window(plt: Any, results: dict[str, Any], names: list[str]) -> Any:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, workload in zip(axes, ("mixed_80", "correctness"), strict=True):
        present = [n for n in names if (_w(results, n, workload) or {}).get("window")]
        xs = list(range(len(present)))
        for offset, stat in ((-0.27, "p50"), (0, "p99"), (0.27, "max")):
            ax.bar([x + offset for x in xs],
                   [_w(results, n, workload)["window"][stat] or 0 for n in present], width=0.27,
                   label=stat, alpha={"p50": 1, "p99": 0.7, "max": 0.4}[stat],
                   color=[COLORS[n] for n in present])
        for limit in (1, 10):
            ax.axhline(limit, color="red", linestyle="--", linewidth=0.8)
        ax.set_xticks(xs, present, rotation=30, ha="right")
        ax.set_yscale("log")
        ax.set_title(f"commit → invalidated ms, {workload} (p50, p99, max)")
    return fig


def _ratios(plt: Any, results: dict[str, Any], names: list[str]) -> Any:
    present = [n for n in names if _w(results, n, "micro")]
    if not present:
        return None
    data = [_w(results, n, "micro") for n in present]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    _bars(axes[0], present, [d["save_ratio_p50"] for d in data],
          "save() / plain save, p50")
    axes[0].axhline(1.10, color="red", linestyle="--", linewidth=1)
    cached = [(n, d) for n, d in zip(present, data, strict=True) if d["hit_served_from_cache"]]
    _bars(axes[1], [n for n, _ in cached], [d["hit_ratio_p50"] for _, d in cached],
          "cached page hit / django-redis get, p50")
    axes[1].axhline(1.2, color="red", linestyle="--", linewidth=1)
    return fig

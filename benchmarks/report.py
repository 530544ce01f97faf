"""Tables (reStructuredText, also the printed summary) and the targets of issue 6.

Every target is a ratio against a baseline measured in the same run, with a verdict; nothing
here asserts on timings.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

#: Written as escapes: the characters themselves look like "-" and "x" in source.
DASH = "\N{EN DASH}"
TIMES = "\N{MULTIPLICATION SIGN}"

ORDER = ("nocache", "ttl", "cacheops", "cachalot", "ours_sync", "ours_celery", "ours_outbox")
#: This app's contenders (transports), in the order of the tables.
OURS = ("ours_sync", "ours_celery", "ours_outbox")
#: The inconsistency window target per transport (ms): sync applies in-process at commit; a
#: worker or a relay gets the celery limit.
WINDOW_LIMITS = {"ours_sync": 1.0, "ours_celery": 10.0, "ours_outbox": 10.0}


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A reStructuredText simple table."""
    cells = [[_cell(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h)
              for i, h in enumerate(headers)]
    rule = " ".join("=" * w for w in widths)
    lines = [rule, " ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip(),
             rule]
    lines += [" ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
              for row in cells]
    lines.append(rule)
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return DASH
    if isinstance(value, float):
        if value >= 100:
            return f"{value:,.0f}"
        if value >= 10:
            return f"{value:.1f}"
        return f"{value:.3g}" if value < 1 else f"{value:.2f}"
    if isinstance(value, int) and abs(value) >= 10_000:
        return f"{value:,}"
    return str(value) or DASH


def _w(result: dict[str, Any], name: str) -> dict[str, Any] | None:
    return (result.get("workloads") or {}).get(name)


def contenders(results: dict[str, dict[str, Any]]) -> list[str]:
    return [c for c in ORDER if c in results and "workloads" in results[c]]


def rows_for(results: dict[str, dict[str, Any]], name: str) -> list[tuple[str, dict[str, Any]]]:
    """(label, figures) of a workload for every contender, this app's capture=False runs
    right after its default ones."""
    found = []
    for c in contenders(results):
        for workload, label in ((name, c), (f"{name}_nocapture", f"{c}, capture=False")):
            data = _w(results[c], workload)
            if data:
                found.append((label, data))
    return found


def mixed_table(results: dict[str, dict[str, Any]], name: str) -> str:
    rows = []
    for c, m in rows_for(results, name):
        window = m.get("window") or {}
        rows.append([c, m["throughput"], m["read_latency"]["p50"], m["read_latency"]["p99"],
                     m["write_latency"]["p50"], m["write_latency"]["p99"], m["queries_per_read"],
                     m["queries_per_request"], _pct(m["hit_rate"]), window.get("p50"),
                     window.get("p99"), window.get("max")])
    return table(["contender", "req/s", "read p50", "read p99", "write p50", "write p99",
                  "SQL/read", "SQL/req", "hit rate", "window p50", "p99", "max"], rows)


def ceilings(results: dict[str, dict[str, Any]], name: str) -> dict[str, float] | None:
    """The best hit rates on the requests of ``name`` (see :mod:`benchmarks.ideal`)."""
    for c in contenders(results):
        m = _w(results[c], name)
        if m:
            if "hit_rate_ceilings" in m:
                return dict(m["hit_rate_ceilings"])
            from .ideal import hit_rate_ceilings
            from .scale import Scale

            return hit_rate_ceilings(Scale(**results[c]["scale"]), m["write_ratio"])
    return None


def ceilings_text(results: dict[str, dict[str, Any]], name: str) -> str:
    found = ceilings(results, name)
    if not found:
        return ""
    never, exact = found["never_invalidating"], found["exact_invalidation"]
    return (f"Ceilings on these requests (``benchmarks/ideal.py``): {_pct(never)} for a cache\n"
            f"that never invalidates, {_pct(exact)} for one that drops exactly the pages a write\n"
            f"changed ({exact / never:.3f} of the first).")


def correctness_table(results: dict[str, dict[str, Any]]) -> str:
    rows = []
    for c, m in rows_for(results, "correctness"):
        after = m["stale_after_invalidation"]
        kinds = m["stale_after_invalidation_by_kind"] if after else m["stale_by_kind"]
        window = m.get("window") or {}
        rows.append([c, m["reads"], m["writes"], m["stale_reads"], m["stale_age"]["p99"],
                     m["stale_age"]["max"], "n/a" if after is None else after,
                     ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())) or DASH,
                     m["torn_reads"], window.get("p50"), window.get("p99"), window.get("max")])
    return table(["contender", "reads", "writes", "stale", "age p99", "age max",
                  "after inval.", "caused by", "torn", "window p50", "p99", "max"], rows)


def fanout_table(results: dict[str, dict[str, Any]]) -> str:
    rows = []
    for c in contenders(results):
        m = _w(results[c], "fanout")
        if not m:
            continue
        ttl = results[c].get("ttl", 60)
        for s in m["sizes"]:
            longest = s["redis_longest"]
            # A fill longer than the TTL lets early entries expire: no memory figure then.
            outlived = s.get("fill_outlived_ttl", s["fill_seconds"] > ttl)
            memory = "n/a (fill > TTL)" if outlived else s["memory_bytes_per_entry"]
            rows.append([c, s["entries"], s["write_ms"], s["window_ms"], longest["ms"],
                         _short(longest["command"]), memory,
                         f"{s['cached_before']}/{s['sampled']}",
                         f"{s['cached_after']}/{s['sampled']}", s["fill_us_per_entry"]])
    return table(["contender", "entries", "save ms", "window ms", "longest Redis ms",
                  "longest command", "bytes/entry", "served before", "served after",
                  "fill µs/entry"], rows)


def bulk_table(results: dict[str, dict[str, Any]]) -> str:
    rows = []
    for c in contenders(results):
        m = _w(results[c], "bulk")
        if not m:
            continue
        for v in m["variants"]:
            longest = v["redis_longest"]
            dropped = v["bystanders_dropped"]
            rows.append([c, v["variant"], v["rows"], v["update_ms"], v["queries"],
                         v["window_ms"], longest["ms"], _short(longest["command"]),
                         f"{v['stale_after']}/{v['sampled']}",
                         DASH if dropped is None else f"{dropped}/{v['bystanders']}"])
    return table(["contender", "call", "rows", "update ms", "SQL", "window ms",
                  "longest Redis ms", "longest command", "stale after", "untouched dropped"],
                 rows)


def micro_table(results: dict[str, dict[str, Any]]) -> str:
    rows = []
    for c in contenders(results):
        m = _w(results[c], "micro")
        if not m:
            continue
        rows.append([c, m["save"]["p50"], m["plain_save"]["p50"], m["save_ratio_p50"],
                     m["save_ratio_mean"], m.get("save_atomic_ratio_p50"),
                     m["redis_commands_per_save"], m["hit"]["p50"],
                     m["redis_get"]["p50"], m["hit_ratio_p50"] if m["hit_served_from_cache"]
                     else "miss"])
    return table(["contender", "save p50 ms", "plain save p50", "ratio p50", "ratio mean",
                  "in atomic() p50", "Redis cmds/save", "page hit p50 ms", "redis get p50",
                  "hit ratio"], rows)


def events_table(results: dict[str, dict[str, Any]]) -> str:
    m = _w(results.get("ours_celery", {}), "events")
    if not m:
        return ""
    rows = [[r["batch_size"], r.get("rate_limit", "default"), r["batches"], r["events"],
             r["drain_seconds"], r["events_per_second"], r["batches_per_second"],
             r["escalated"]] for r in m["runs"]]
    return table(["events/batch", "rate limit", "batches", "events", "drain s", "events/s",
                  "batches/s", "escalated"], rows)


def relay_text(results: dict[str, dict[str, Any]]) -> str:
    """What the ``ours_outbox`` relay cost: its poll interval and CPU time."""
    relay = results.get("ours_outbox", {}).get("relay")
    if not relay:
        return ""
    wall = relay["wall_seconds"]
    share = f" ({relay['cpu_seconds'] / wall:.0%} of one core)" if wall else ""
    return (f"ours_outbox: one relay process (``manage.py relay_outbox --loop --interval "
            f"{relay['interval']:g} --limit {relay['limit']}``), "
            f"{_cell(relay['cpu_seconds'])} s of CPU over {_cell(wall)} s{share}.")


def _pct(value: float | None) -> str | None:
    return None if value is None else f"{value * 100:.1f}%"


def _short(command: str | None) -> str | None:
    if not command:
        return None
    return command.split()[0] if command.startswith(("EVAL", "EVALSHA")) else command[:20]


# -- targets --------------------------------------------------------------------------------
def targets(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def add(target: str, measured: str, ratio: float | None, limit: float, ok: bool | None,
            note: str = "") -> None:
        out.append({"target": target, "measured": measured,
                    "ratio": None if ratio is None else round(ratio, 3), "limit": limit,
                    "verdict": "n/a" if ok is None else ("met" if ok else "MISSED"),
                    "note": note})

    for c in OURS:
        m = _w(results.get(c, {}), "micro")
        if m:
            atomic = m.get("save_atomic_ratio_p50")
            add(f"save() ≤ 1.10{TIMES} plain save ({c})",
                f"{_cell(m['save']['p50'])} ms vs {_cell(m['plain_save']['p50'])} ms (p50)"
                + ("" if atomic is None else f"; in atomic(): {_cell(atomic)}{TIMES}"),
                m["save_ratio_p50"], 1.10, m["save_ratio_p50"] <= 1.10)
    m = _w(results.get("ours_sync", {}), "micro")
    if m:
        add(f"tagged hit ≤ 1.2{TIMES} django-redis get",
            f"{_cell(m['hit']['p50'])} ms vs {_cell(m['redis_get']['p50'])} ms (p50)",
            m["hit_ratio_p50"], 1.2, m["hit_ratio_p50"] <= 1.2)
    for c in OURS:
        for workload, label in (("correctness", c), ("correctness_nocapture",
                                                     f"{c}, capture=False")):
            m = _w(results.get(c, {}), workload)
            if m:
                n = m["stale_after_invalidation"]
                add(f"0 stale reads once invalidation applied ({label})",
                    f"{n} of {m['reads']} reads ({m['stale_reads']} inside the window)",
                    None, 0, n == 0)
    for c, limit in WINDOW_LIMITS.items():
        p99s = []
        for name in ("mixed_80", "correctness"):
            m = _w(results.get(c, {}), name)
            if m and m.get("window") and m["window"]["p99"] is not None:
                p99s.append((name, m["window"]["p99"]))
        if p99s:
            worst = max(v for _, v in p99s)
            add(f"window p99 ≤ {limit:g} ms ({c})",
                ", ".join(f"{n}: {_cell(v)} ms" for n, v in p99s), worst / limit, limit,
                worst <= limit)
    m = _w(results.get("ours_celery", {}), "events")
    if m:
        # The verdict counts the run where every event's own tags were invalidated: with the
        # default rate limit, storm control escalates part of a fast stream to a coarse tag.
        batched = [r for r in m["runs"] if r["batch_size"] > 1]
        clean = next((r for r in batched if r.get("rate_limit") == "off"), batched[-1])
        rate = clean["events_per_second"]
        others = "; ".join(
            f"{_cell(r['events_per_second'])} with the default rate limit, {r['escalated']} of "
            f"{_cell(r['events'])} escalated" for r in batched if r is not clean)
        add(f"≥ 5,000 events/s, one worker, batches of {clean['batch_size']}",
            f"{_cell(rate)} events/s, no escalation "
            f"({_cell(m['runs'][0]['events_per_second'])} unbatched; {others})",
            None if rate is None else rate / 5000, 5000,
            None if rate is None else rate >= 5000)
    cachalot = _w(results.get("cachalot", {}), "mixed_80")
    ttl = _w(results.get("ttl", {}), "mixed_80")
    for c in OURS:
        for workload, label in (("mixed_80", c), ("mixed_80_nocapture", f"{c}, capture=False")):
            ours = _w(results.get(c, {}), workload)
            if ours and cachalot and cachalot["hit_rate"]:
                ratio = ours["hit_rate"] / cachalot["hit_rate"]
                add(f"hit rate ≥ 2{TIMES} cachalot's at 80/20 ({label})",
                    f"{_pct(ours['hit_rate'])} vs {_pct(cachalot['hit_rate'])}", ratio, 2.0,
                    ratio >= 2.0)
            if ours and ttl and ttl["hit_rate"]:
                ratio = ours["hit_rate"] / ttl["hit_rate"]
                ceiling = ceilings(results, "mixed_80")
                best = "" if not ceiling else (
                    f"; exact invalidation can reach {_pct(ceiling['exact_invalidation'])}")
                add(f"hit rate within 5% of TTL-only's at 80/20 ({label})",
                    f"{_pct(ours['hit_rate'])} vs {_pct(ttl['hit_rate'])}{best}", ratio, 0.95,
                    ratio >= 0.95)
    blocks = []
    for c in OURS:
        for s in (_w(results.get(c, {}), "fanout") or {}).get("sizes", []):
            blocks.append((f"{c} fan-out {s['entries']:,}", s["redis_longest"]["ms"]))
        for v in (_w(results.get(c, {}), "bulk") or {}).get("variants", []):
            blocks.append((f"{c} bulk {v['rows']:,}", v["redis_longest"]["ms"]))
    if blocks:
        name, worst = max(blocks, key=lambda b: b[1])
        add("Redis never blocked > 10 ms by an invalidation", f"longest {_cell(worst)} ms ({name})",
            worst / 10, 10, worst <= 10)
    return out


def targets_table(rows: list[dict[str, Any]]) -> str:
    return table(["target", "measured", "ratio to limit or baseline", "verdict"],
                 [[r["target"], r["measured"], r["ratio"], r["verdict"]] for r in rows])


def summary(results: dict[str, dict[str, Any]]) -> str:
    parts = []
    skipped = [f"{c}: {r['skipped']}" for c, r in results.items() if r.get("skipped")]
    if skipped:
        parts.append("Skipped contenders:\n" + "\n".join(f"- {s}" for s in skipped))
    for title, body in (
        ("Shop traffic, 95/5 read/write",
         mixed_table(results, "mixed_95") + "\n\n" + ceilings_text(results, "mixed_95")),
        ("Shop traffic, 80/20 read/write",
         mixed_table(results, "mixed_80") + "\n\n" + ceilings_text(results, "mixed_80")),
        ("Correctness: concurrent readers against the database", correctness_table(results)),
        ("Write fan-out: one save, N dependent entries", fanout_table(results)),
        ("Bulk: one QuerySet.update()", bulk_table(results)),
        ("Baselines in the same process",
         "\n\n".join(t for t in (micro_table(results), relay_text(results)) if t)),
        ("Events per second, one Celery worker (solo pool)", events_table(results)),
        ("Targets", targets_table(targets(results))),
    ):
        if body:
            parts.append(f"{title}\n{'-' * len(title)}\n\n{body}")
    return "\n\n".join(parts) + "\n"

"""Write a run's results: ``latest.json`` (everything), ``latest.md`` (tables), ``latest.png``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .hitpath import DISTURBED_CORES, ratio
from .targets import BASELINE_RUN, EDGE, NGINX, Verdict
from .tierreport import misscost_section, misscost_table, zipf2_section, zipf2_table

MIB = 1024**2


def _fmt_rate(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:,.0f} ms" if v >= 0.01 else f"{v * 1000:.1f} ms"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:.1f}%"


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


_FRAMEWORK = ("click/", "runpy", "multiprocessing/", "uvicorn/main.py", "uvicorn/server.py",
              "uvicorn/_", "uvicorn/supervisors", "asyncio/runners.py", "edgeproxy/cli/",
              "edgeproxy/server.py", "edgeproxy/__main__.py", "<string>", "_distutils_hack")


def _useful(inclusive: list[tuple[str, float]], k: int = 22) -> list[tuple[str, float]]:
    """Inclusive rows minus the start-up frames that are on every stack."""
    return [(n, s) for n, s in inclusive if not any(f in n for f in _FRAMEWORK)][:k]


def hit_tables(summary: list[dict[str, Any]], servers: list[str]) -> list[str]:
    """Throughput (median, min-max spread) and latency tables of the hit path."""
    others = [s for s in servers if s != EDGE]
    head = ["cell", "metric", *servers, *(f"{EDGE}/{o}" for o in others)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in summary:
        metric = row["metric"]
        unit = "req/s" if metric == "rps" else "MiB/s"
        cells = [f"**{row['label']}** @{row['connections']}" if row["headline"]
                 else f"{row['label']} @{row['connections']}", unit]
        for name in servers:
            s = row["servers"].get(name)
            if s is None:
                cells.append("-")
                continue
            text = _fmt_rate(s[metric])
            if s["repeats"] > 1:
                text += f" ({_fmt_rate(s[metric + '_min'])}-{_fmt_rate(s[metric + '_max'])})"
            if s.get("foreign_cores_max", 0.0) > DISTURBED_CORES:
                text += " ~"
            if s["origin_requests"] or s["errors"]:
                text += f" ⚠ origin {s['origin_requests']}, errors {s['errors']}"
            cells.append(text)
        cells += [_x(ratio(row, EDGE, o)) for o in others]
        lines.append("| " + " | ".join(cells) + " |")
    lat_head = ["cell", *(f"{s} p50 / p99" for s in servers)]
    lat = ["| " + " | ".join(lat_head) + " |", "|" + "---|" * len(lat_head)]
    for row in summary:
        cells = [f"{row['label']} @{row['connections']}"]
        for name in servers:
            s = row["servers"].get(name)
            if s is None or s["completed"] < 10:
                cells.append("- (too few completed)" if s else "-")
            else:
                cells.append(f"{s['p50_ms']:.2f} / {s['p99_ms']:.2f} ms")
        lat.append("| " + " | ".join(cells) + " |")
    return [*lines, "", "Latency of completed requests (median over repetitions):", "", *lat]


def _interference_text(info: dict[str, Any] | None) -> str:
    if not info:
        return ""
    return (f"Other work on the machine (CPU used by processes that are not part of the "
            f"benchmark): a run during which it exceeded {info['threshold_cores']:.2f} cores "
            f"was repeated up to {info['retries']}x (while the retries had taken less than "
            f"{info.get('retry_budget_share', 1.0):.0%} of the section's planned time) and the "
            f"least disturbed attempt kept. "
            f"{info['disturbed_attempts']} of {info['attempts']} attempts were disturbed; "
            f"{info['kept_disturbed']} of {info['runs']} kept runs still were (marked ~). "
            f"Kept runs: {info['kept_mean_cores']:.2f} foreign cores on average, "
            f"{info['kept_max_cores']:.2f} at most.")


def markdown(results: dict[str, Any], verdicts: list[Verdict]) -> str:
    """The whole report as markdown."""
    meta = results["meta"]
    out = [
        "# edgeproxy vs nginx vs Varnish — latest results",
        "",
        f"Run {meta['started']} · mode **{meta['mode']}** · commit `{meta['commit']}` · "
        f"{meta['versions']['cpus']} CPUs · {meta['versions']['nginx']} · "
        f"{meta['versions']['varnish']} · {meta['versions']['wrk']} · "
        f"{meta['versions'].get('python', '?')}, 10M-addition loop "
        f"{meta['versions'].get('cpu_speed', '?')} · took {meta['elapsed_s'] / 60:.1f} min",
        "",
        f"Everything on one machine over loopback, clients included. edgeproxy edge: "
        f"{meta['edge_workers']} uvicorn workers; nginx: 2 workers; Varnish: default thread "
        f"pools, `{meta['varnish_storage']}`. Command: `{meta['command']}`.",
        "",
        "## Targets",
        "",
    ]
    for v in verdicts:
        out.append(f"- **{v.word}** — {v.target}: {v.detail}")
    base = results.get("baseline")
    if base:
        hit_names = results.get("hit_path", {}).get("servers", [])
        out += ["", "\"At least where it was\" compares each hit-path ratio with "
                + (f"the ratio of commit `{base['commit']}`'s edge in this same run (column "
                   f"`{BASELINE_RUN}`; the ratios stored in `{base['file']}`, from its "
                   f"{base['mode']} run of {base['started']}, are quoted for reference)."
                   if BASELINE_RUN in hit_names else
                   f"`{base['file']}` ({base['mode']} run of {base['started']}, commit "
                   f"`{base['commit']}`).")]
    hit = results.get("hit_path")
    if hit:
        out += [
            "",
            "## Hit path (warm caches, wrk)",
            "",
            f"wrk -t2, {hit['duration_s']:g} s per run, servers interleaved round-robin per "
            f"cell; " + (f"**bold** cells (targets) repeated {hit['repeats']}x with the "
                         f"server order rotated (median, min-max in brackets), others once. "
                         if hit["repeats"] > 1 else "every cell run once (no spread). ") +
            f"Ratios compare medians: req/s for small bodies, MiB/s (read off "
            f"the wire) for ≥ 1 MiB. Every run was preceded by a verified HIT, and the origin "
            f"counter was read around it (⚠ marks a run that reached the origin or had "
            f"errors). The 64 KiB range is `{hit['range']}` of the 16 MiB blob. wrk sends "
            f"the same request head again and again, and edgeproxy answers a head it "
            f"answered from memory before from a record, without parsing it (its replays); "
            f"the *new heads* cell sends the same range with an `X-Request-Id` that counts "
            f"up, so that no head repeats: what a hit costs when every head differs.",
            "",
            _interference_text(hit.get("interference")),
            "",
            *hit_tables(hit["summary"], hit["servers"]),
        ]
    late = results.get("late_range")
    if late:
        out += [
            "",
            f"## Cold: last 64 KiB of a cold 100 MiB object (origin {meta['throttle_mibps']:g}"
            f" MiB/s per response)",
            "",
            "| server | TTFB (median) | runs (TTFB) | origin bytes for the object | "
            "nginx TTFB / this |",
            "|---|---|---|---|---|",
        ]
        nginx_ttfb = late.get(NGINX, {}).get("ttfb_s")
        for name, res in late.items():
            runs = ", ".join(_ms(r["ttfb_s"]) for r in res["runs"])
            speed = _x(nginx_ttfb / res["ttfb_s"]) if nginx_ttfb and res["ttfb_s"] else "-"
            out.append(f"| {name} | {_ms(res['ttfb_s'])} | {runs} | "
                       f"{res['origin_bytes'] / MIB:.1f} MiB | {speed} |")
    stampede = results.get("stampede")
    if stampede:
        out += [
            "",
            f"## Cold: stampede — 200 clients released at once on 20 cold 16 MiB objects "
            f"(origin {meta['throttle_mibps']:g} MiB/s per response)",
            "",
            "Leader = the object's client with the earliest first byte; follower/leader = "
            "slowest other client's TTFB over the leader's, per object. One row per "
            "repetition (fresh objects each time; servers interleaved).",
            "",
            "| server | complete | origin requests (per object) | edge→shield requests | "
            "TTFB p50 / p99 | leader TTFB (median) | follower/leader median / worst | "
            "last byte p50 / p99 | largest worker RSS, before -> peak |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for name, r in ((n, r) for n, reps in stampede.items() for r in reps):
            per = r["origin_requests_per_object"]
            edge_up = r.get("edge_upstream_requests")
            out.append(
                f"| {name} | {r['complete']}/{r['clients']} | {r['origin_requests_total']} "
                f"({min(per)}-{max(per)}) | {'-' if edge_up is None else f'{edge_up:.0f}'} | "
                f"{_ms(r['ttfb_p50_s'])} / {_ms(r['ttfb_p99_s'])} | "
                f"{_ms(r['leader_ttfb_median_s'])} | {_x(r['follower_over_leader_median'])} / "
                f"{_x(r['follower_over_leader_max'])} | {_ms(r['ttlb_p50_s'])} / "
                f"{_ms(r['ttlb_p99_s'])} | " + "; ".join(
                    f"{name.removeprefix(r['server'] + '-') if name != r['server'] else ''} "
                    f"{v['before_mib']:.0f} -> {v['peak_mib']:.0f} MiB".strip()
                    for name, v in r.get("rss_largest_worker", {}).items()) + " |")
    zipf = results.get("zipf")
    if zipf:
        c = zipf["client"]
        lat = ", ".join(f"{r['p50_us'] / 1000:.1f} / {r['p99_us'] / 1000:.0f} ms"
                        for r in zipf["per_edge_client"])
        out += [
            "",
            f"## Zipf mix: {zipf['edges']} edge(s) -> one shield -> origin "
            f"({zipf['duration_s']:g} s)",
            "",
            f"{zipf['objects']:,} objects (1-128 KiB, log-uniform), Zipf s={zipf['zipf_s']}, "
            f"{zipf['range_fraction'] * 100:.0f}% range GETs; wrk with `zipf_mix.lua`, "
            f"{zipf['connections']} connections split over the edges (same popularity order "
            f"on each). One worker per node, so each `/metrics` scrape is complete. Caches "
            f"start empty: the ratios include the warm-up.",
            "",
            "| | value |",
            "|---|---|",
            f"| client requests | {c['requests']:,} ({zipf['rps']:,.0f} req/s), "
            f"{c['errors']} errors, {c['sother']} non-2xx |",
            f"| client latency p50 / p99, per edge | {lat} |",
        ]
        for node, t in zipf["nodes"].items():
            out.append(f"| {node}: hit ratio (/metrics) | {_pct(t['hit_ratio'])} of "
                       f"{t['requests']:,.0f} requests; {t['upstream_requests']:,.0f} sent "
                       f"upstream |")
        tier = zipf["edge_tier"]
        out += [
            f"| edge tier: hit ratio (/metrics) | {_pct(tier['hit_ratio'])} of "
            f"{tier['requests']:,.0f} requests |",
            f"| edge / shield hit ratio (X-Cache) | {_pct(zipf['x_cache_edge_hit_ratio'])} / "
            f"{_pct(zipf['x_cache_shield_hit_ratio'])} of the edges' misses |",
            f"| origin offload (requests / bytes) | {_pct(zipf['origin_request_offload'])} / "
            f"{_pct(zipf['origin_byte_offload'])} ({zipf['origin_requests']:,} origin "
            f"requests; bytes compare origin bodies with client bytes incl. headers) |",
        ]
    if results.get("zipf2"):
        out += zipf2_section(results["zipf2"])
    if results.get("misscost"):
        out += misscost_section(results["misscost"])
    memory = results.get("memory")
    if memory:
        out += [
            "",
            "## Memory: 64 clients download the 100 MiB blob at once",
            "",
            "RSS of the server's process tree sampled every 50 ms (psutil). Warm: the blob is "
            "cached; cold: a fresh copy through the throttled origin. `edgeproxy-fresh` is an "
            "edge started just for this test (cold first); the others have served every "
            "earlier section (the hit path's `100 MiB @64` cell is this same load), so their "
            "'before' shows what they kept. Varnish's figure includes its malloc storage.",
            "",
            "| server | case | largest worker: before -> peak | all processes: before -> "
            "peak | complete | wall | client MiB/s |",
            "|---|---|---|---|---|---|---|",
        ]
        for m in memory:
            out.append(f"| {m['server']} | {'cold' if m['cold'] else 'warm'} | "
                       f"{m['baseline_worker_mib']:.0f} -> {m['peak_per_worker_mib']:.0f} MiB | "
                       f"{m['baseline_mib']:.0f} -> {m['peak_total_mib']:.0f} MiB | "
                       f"{m['complete']}/{m['clients']} | {m['wall_s']:.1f} s | "
                       f"{m['client_mibps']:,.0f} |")
    timeline = results.get("rss_timeline")
    if timeline:
        names = list(dict.fromkeys(t["process"] for t in timeline))
        out += [
            "",
            "RSS of edgeproxy's largest worker after each section (MiB; all processes in "
            "brackets):",
            "",
            "| after | " + " | ".join(names) + " |",
            "|---|" + "---|" * len(names),
        ]
        for after in dict.fromkeys(t["after"] for t in timeline):
            row = {t["process"]: t for t in timeline if t["after"] == after}
            out.append(f"| {after} | " + " | ".join(
                f"{row[n]['largest_worker_mib']:.0f} ({row[n]['total_mib']:.0f})" if n in row
                else "-" for n in names) + " |")
    for prof in results.get("profile") or []:
        out += [
            "",
            f"## Profile: edgeproxy edge ({results['meta']['edge_workers']} workers), "
            f"{prof['label']} (py-spy, {prof['samples']:,} samples)",
            "",
            f"Raw collapsed stacks: `{prof['raw_file']}` (open in speedscope.app). Time in C "
            f"(SQLite, socket writes) is charged to the calling Python function.",
            "",
            "| self time by package | share |",
            "|---|---|",
            *(f"| {name} | {share * 100:.1f}% |" for name, share in prof["self_by_package"][:10]),
            "",
            "| function (inclusive: on the stack) | share |",
            "|---|---|",
            *(f"| `{name}` | {share * 100:.1f}% |" for name, share in _useful(prof["inclusive"])),
            "",
            "| function (self: innermost frame) | share |",
            "|---|---|",
            *(f"| `{name}` | {share * 100:.1f}% |" for name, share in prof["self"][:15]),
        ]
    if results.get("notes"):
        out += ["", "## Notes", "", *(f"- {n}" for n in results["notes"])]
    return "\n".join(out) + "\n"


def chart(results: dict[str, Any], path: Path) -> None:
    """Bar chart of edgeproxy's hit-path ratios against each other server."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hit = results.get("hit_path")
    if not hit:
        return
    summary = hit["summary"]
    others = [s for s in hit["servers"] if s != EDGE]
    labels = [f"{r['label']}\n@{r['connections']}" for r in summary]
    fig, ax = plt.subplots(figsize=(max(8, len(labels) * 0.9), 4.8))
    width = 0.8 / max(1, len(others))
    for i, other in enumerate(others):
        values = [ratio(r, EDGE, other) or 0 for r in summary]
        xs = [x + (i - (len(others) - 1) / 2) * width for x in range(len(summary))]
        ax.bar(xs, values, width, label=f"{EDGE} / {other}")
    targets = {"2 KiB": 0.5, "64 KiB range": 0.7, "1 MiB": 1.0, "16 MiB": 1.0}
    for x, row in enumerate(summary):
        if row["label"] in targets:
            t = targets[row["label"]]
            ax.plot([x - 0.45, x + 0.45], [t, t], color="black", linestyle="--", linewidth=1)
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_xticks(range(len(summary)), labels, fontsize=8)
    ax.set_ylabel("ratio (req/s for small bodies, MiB/s for >= 1 MiB)")
    ax.set_title(f"Hit path: edgeproxy relative to others "
                 f"(dashes: targets vs {NGINX}; {results['meta']['started']})", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


README_START = "<!-- latest-results:start -->"
README_END = "<!-- latest-results:end -->"


def readme_block(results: dict[str, Any], verdicts: list[Verdict]) -> str:
    """The short "latest results" section of benchmarks/README.md."""
    meta = results["meta"]
    out = [f"From `{meta['command']}` on {meta['started']} (commit `{meta['commit']}`, "
           f"{meta['versions']['cpus']} CPUs); all tables in "
           f"[results/latest.md](results/latest.md).", ""]
    out += [f"- **{v.word}** — {v.target}: {v.detail}" for v in verdicts]
    hit = results.get("hit_path")
    if hit:
        names = hit["servers"]
        others = [n for n in names if n != EDGE]
        out += ["", "| hit path | unit | " + " | ".join(names) + " | " +
                " | ".join(f"{EDGE}/{o}" for o in others) + " |",
                "|---|---|" + "---|" * (len(names) + len(others))]
        for row in hit["summary"]:
            unit = "req/s" if row["metric"] == "rps" else "MiB/s"
            vals = [_fmt_rate(row["servers"][n][row["metric"]]) if n in row["servers"] else "-"
                    for n in names]
            out.append(f"| {row['label']} @{row['connections']} | {unit} | " + " | ".join(vals)
                       + " | " + " | ".join(_x(ratio(row, EDGE, o)) for o in others) + " |")
    if results.get("zipf2"):
        out += ["", f"Zipf mix through two tiers ({results['zipf2']['window_s']:g} s cold, "
                f"then warm):", "", *zipf2_table(results["zipf2"])]
    if results.get("misscost"):
        out += ["", "Sequential miss cost through two tiers:", "",
                *misscost_table(results["misscost"])]
    out += ["", "![hit-path ratios](results/latest.png)"]
    return "\n".join(out)


def update_readme(readme: Path, block: str) -> bool:
    """Replace the text between the README's markers; False if the markers are missing."""
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        return False
    head, _, rest = text.partition(README_START)
    _, _, tail = rest.partition(README_END)
    readme.write_text(f"{head}{README_START}\n{block}\n{README_END}{tail}")
    return True


def write(results: dict[str, Any], verdicts: list[Verdict], out_dir: Path,
          stem: str = "latest", *, draw: bool = True) -> list[Path]:
    """Write ``<stem>.json``, ``<stem>.md`` and (``draw``) ``<stem>.png`` into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    results = {**results, "targets": [v.to_json() for v in verdicts]}
    paths = [out_dir / f"{stem}.json", out_dir / f"{stem}.md"]
    paths[0].write_text(json.dumps(results, indent=1, default=str) + "\n")
    paths[1].write_text(markdown(results, verdicts))
    if draw:
        paths.append(out_dir / f"{stem}.png")
        chart(results, paths[2])
    return paths



"""Markdown tables of the two-tier cells: the Zipf mix cold/warm and the sequential miss cost."""

from __future__ import annotations

from typing import Any

from .targets import EDGE, NGINX
from .zipf2 import WINDOW_NAMES, window

VARNISH = "varnish"


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def zipf2_table(z2: dict[str, Any]) -> list[str]:
    """One row per server: req/s, latency and origin requests per window, and the totals."""
    head = ["server"]
    for name in WINDOW_NAMES:
        head += [f"{name} req/s", f"{name} p50 / p99", f"{name} origin requests"]
    head += ["origin requests / objects fetched", "per object: requests / bytes",
             "errors, non-2xx", "other work (cores)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for server, res in z2["servers"].items():
        cells = [f"{server} x2"]
        for name in WINDOW_NAMES:
            w = window(z2, server, name)
            if w is None:
                cells += ["-", "-", "-"]
                continue
            cells += [f"{w['rps']:,.0f}", f"{w['p50_ms']:.1f} / {w['p99_ms']:.0f} ms",
                      f"{w['origin_requests']:,}"]
        errors = sum(w["errors"] for w in res["windows"])
        non2xx = sum(w["non_2xx"] for w in res["windows"])
        rpo, bpo = res["requests_per_object"], res["bytes_per_object_byte"]
        cells += [f"{res['origin_requests']:,} / {res['objects_fetched']:,}",
                  "-" if rpo is None else f"{rpo:.3f} / {bpo:.3f}", f"{errors}, {non2xx}",
                  " / ".join(f"{w['foreign_cores']:.2f}" for w in res["windows"])]
        lines.append("| " + " | ".join(cells) + " |")
    sentences = []
    for other in (NGINX, VARNISH):
        ratios = []
        for name in WINDOW_NAMES:
            mine, theirs = window(z2, EDGE, name), window(z2, other, name)
            value = _ratio(mine["rps"], theirs["rps"]) if mine and theirs else None
            ratios.append(f"{name} {_x(value)}")
        sentences.append(f"{EDGE} x2 / {other} x2 req/s: {', '.join(ratios)}.")
    return [*lines, "", " ".join(sentences)]


def zipf2_section(z2: dict[str, Any]) -> list[str]:
    """The whole markdown section of the two-tier Zipf mix."""
    return [
        "",
        f"## Zipf mix through two tiers: edge -> shield -> origin, every server "
        f"({z2['window_s']:g} s cold, then {z2['window_s']:g} s warm)",
        "",
        f"{z2['objects']:,} objects (1-128 KiB, log-uniform), Zipf s={z2['zipf_s']:g}, "
        f"{z2['range_fraction'] * 100:.0f}% single-range GETs, wrk -t2 -c{z2['connections']} "
        f"with `zipf_mix.lua`, the same object list and request sequence for every server. Each "
        f"server runs as a freshly started pair, alone: edgeproxy `serve --role edge` -> "
        f"`serve --role shield` ({z2['edgeproxy_workers']} workers each), nginx -> nginx "
        f"(proxy_cache, 2 workers each), Varnish -> Varnish. The cold window starts with empty "
        f"caches; the warm one follows right after. Origin requests are counted at the origin "
        f"per window; the totals add the fills that were still running after the last window. "
        f"Per object: origin requests and body bytes per object fetched (1.000 / 1.000 = each "
        f"object crossed the origin once, whole). Other work: cores kept busy by processes outside "
        f"the benchmark during each window (the machine is shared).",
        "",
        *zipf2_table(z2),
    ]


def misscost_table(mc: dict[str, Any]) -> list[str]:
    """One row per server: CPU ms per miss per tier, latency, origin requests."""
    lines = ["| server | edge CPU ms/miss | shield CPU ms/miss | origin CPU ms/miss | "
             "latency p50 / p99 | origin requests | edge hits | other work (cores) |",
             "|---|---|---|---|---|---|---|---|"]
    for server, r in mc["servers"].items():
        t = r["tiers"]
        lines.append(
            f"| {server} x2 | {t['edge']['cpu_ms_per_miss']:.3f} | "
            f"{t['shield']['cpu_ms_per_miss']:.3f} | {t['origin']['cpu_ms_per_miss']:.3f} | "
            f"{r['latency_p50_ms']:.2f} / {r['latency_p99_ms']:.2f} ms | "
            f"{r['origin_requests']}/{r['requests']} | {r['hits']} | "
            f"{r.get('foreign_cores', 0.0):.2f} |")
    return lines


def misscost_section(mc: dict[str, Any]) -> list[str]:
    """The whole markdown section of the sequential miss cost."""
    return [
        "",
        f"## Sequential miss cost: CPU per miss per tier ({mc['requests']:,} misses of "
        f"{mc['object_bytes'] // 1024} KiB)",
        "",
        f"One client, one keep-alive connection, {mc['requests']:,} distinct fresh objects "
        f"asked for one after another through a freshly started edge -> shield pair (after "
        f"{mc['warmup']} warm-up misses). CPU = user + system time of each tier's whole process "
        f"tree (psutil) over the run, minus its idle rate (measured for "
        f"{mc['idle_seconds']:g} s before and after) times the run's wall time, divided by the "
        f"number of misses. The origin's column is the bench origin's own cost, for reference. "
        f"Resolution: one 10 ms accounting tick per tier over the run.",
        "",
        *misscost_table(mc),
    ]

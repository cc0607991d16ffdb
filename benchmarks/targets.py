"""The issue's targets, judged on one run's results (same machine, same run).

Hit-path ratios are judged at every connection count measured (16 and 64): a target passes
only if it holds at each. "nginx" is the plain proxy_cache configuration (no slice module).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .hitpath import ratio

EDGE = "edgeproxy"
CHAIN = "edgeproxy-chain"
NGINX = "nginx"
FRESH = "edgeproxy-fresh"  # an edge started just for the memory test
RSS_LIMIT_MIB = 150.0


@dataclass(frozen=True)
class Verdict:
    """One target: its wording, PASS/FAIL (None: not measured) and the numbers behind it."""

    target: str
    passed: bool | None
    detail: str

    @property
    def word(self) -> str:
        """PASS, FAIL or N/A."""
        return {True: "PASS", False: "FAIL", None: "N/A"}[self.passed]

    def to_json(self) -> dict[str, Any]:
        """Plain dict for latest.json."""
        return {"target": self.target, "result": self.word, "detail": self.detail}


def _hit_target(summary: list[dict[str, Any]], label: str, minimum: float,
                wording: str) -> Verdict:
    rows = [r for r in summary if r["label"] == label]
    if not rows:
        return Verdict(wording, None, "not measured")
    parts, ok = [], True
    for row in rows:
        value = ratio(row, EDGE, NGINX)
        if value is None:
            return Verdict(wording, None, f"{row['cell']}: not measured")
        ok = ok and value >= minimum
        metric, unit = row["metric"], ("req/s" if row["metric"] == "rps" else "MiB/s")
        mine, theirs = row["servers"][EDGE][metric], row["servers"][NGINX][metric]
        parts.append(f"{value:.2f}x at {row['connections']} conns "
                     f"({mine:,.0f} vs {theirs:,.0f} {unit})")
    return Verdict(wording, ok, f"{'; '.join(parts)} (need >= {minimum:.1f}x)")


def judge(results: dict[str, Any]) -> list[Verdict]:
    """Every target of the issue, in its order."""
    out: list[Verdict] = []
    summary = results.get("hit_path", {}).get("summary", [])
    out.append(_hit_target(summary, "2 KiB", 0.5, "2 KiB hits >= 0.5x nginx req/s"))
    out.append(_hit_target(summary, "64 KiB range", 0.7,
                           "64 KiB range hits >= 0.7x nginx req/s"))
    out.append(_hit_target(summary, "1 MiB", 1.0, "1 MiB hits >= 1.0x nginx throughput"))
    out.append(_hit_target(summary, "16 MiB", 1.0, "16 MiB hits >= 1.0x nginx throughput"))
    out.append(_late_range(results.get("late_range", {})))
    out.append(_stampede(results.get("stampede", {})))
    out.append(_memory(results.get("memory", [])))
    return out


def _late_range(late: dict[str, Any]) -> Verdict:
    wording = "late 64 KiB range of a cold 100 MiB object: first byte >= 10x sooner than nginx"
    edge, nginx = late.get(EDGE, {}).get("ttfb_s"), late.get(NGINX, {}).get("ttfb_s")
    if not edge or not nginx:
        return Verdict(wording, None, "not measured")
    speedup = nginx / edge
    detail = (f"edgeproxy {edge * 1000:.0f} ms vs nginx {nginx * 1000:.0f} ms = "
              f"{speedup:.1f}x sooner (need >= 10x)")
    chain = late.get(CHAIN, {}).get("ttfb_s")
    if chain:
        detail += f"; edge->shield {chain * 1000:.0f} ms = {nginx / chain:.1f}x"
    return Verdict(wording, speedup >= 10, detail)


def _stampede(stampede: dict[str, Any]) -> Verdict:
    wording = ("stampede (200 clients, 20 cold 16 MiB objects): exactly one upstream request "
               "per object per tier, followers' TTFB within 2x the leader's")
    checks, details = [], []
    for name in (EDGE, CHAIN):
        reps = stampede.get(name)
        if not reps:
            continue
        parts = []
        for res in reps:
            per_obj = res["origin_requests_per_object"]
            one = all(n == 1 for n in per_obj)
            tiers = f"origin {min(per_obj)}-{max(per_obj)}/object"
            if res.get("edge_upstream_requests") is not None:
                edge_up = res["edge_upstream_requests"]
                one = one and edge_up == res["objects"]
                tiers += f", edge->shield {edge_up:.0f}/{res['objects']}"
            worst = res["follower_over_leader_max"]
            within = worst is not None and worst <= 2.0
            checks += [one, within, res["complete"] == res["clients"]]
            parts.append(f"{tiers}, worst follower/leader {_x(worst)}, "
                         f"leader TTFB {res['leader_ttfb_median_s'] * 1000:.0f} ms"
                         if res["leader_ttfb_median_s"] is not None else tiers)
        details.append(f"{name}: " + " | ".join(parts))
    if not checks:
        return Verdict(wording, None, "not measured")
    return Verdict(wording, all(checks), "; ".join(details) + " (one entry per repetition)")


def _memory(memory: list[dict[str, Any]]) -> Verdict:
    wording = (f"edge peak RSS under 64 concurrent 100 MiB downloads <= {RSS_LIMIT_MIB:.0f} MiB "
               f"per worker")
    mine = [m for m in memory if m["server"] in (FRESH, EDGE)]
    if not mine:
        return Verdict(wording, None, "not measured")
    ok = all(m["peak_per_worker_mib"] <= RSS_LIMIT_MIB and m["complete"] == m["clients"]
             for m in mine)
    detail = "; ".join(
        f"{'new' if m['server'] == FRESH else 'long-running'} edge, "
        f"{'cold' if m['cold'] else 'warm'}: {m['peak_per_worker_mib']:.0f} MiB largest worker "
        f"({m['baseline_worker_mib']:.0f} before), {m['complete']}/{m['clients']} complete"
        for m in mine)
    return Verdict(wording, ok, detail)


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"

"""The issues' targets, judged on one run's results (same machine, same run).

Hit-path ratios are judged at every connection count measured (16 and 64): a target passes
only if it holds at each. "nginx" is the plain proxy_cache configuration (no slice module);
in the two-tier cells it is nginx x2 (edge nginx → shield nginx). Every hit-path ratio is
also compared with the baseline, the commit issue 8 started from: "at least where it was",
within `BASELINE_NOISE`. Its ratio is measured in the same run where the hit path ran its
edge beside the others (`benchmarks.baseline`), else taken from `BASELINE`, the results
committed then.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import baseline, zipf2
from .hitpath import ratio

EDGE = "edgeproxy"
CHAIN = "edgeproxy-chain"
NGINX = "nginx"
FRESH = "edgeproxy-fresh"  # an edge started just for the memory test
BASELINE_RUN = baseline.SERVER  # the baseline commit's edge, run beside the others
RSS_LIMIT_MIB = 150.0
BASELINE = Path(__file__).resolve().parent / "results" / "baseline-issue8.json"
BASELINE_NOISE = 0.05  # a ratio 5 % under the baseline's still counts as "where it was"
ZIPF2_COLD, ZIPF2_WARM = 0.5, 0.7  # x nginx x2 req/s
OFFLOAD_SLACK, OFFLOAD_CONSTANT = 0.05, 50  # origin requests <= nginx's x 1.05 + 50
MISS_CPU_MS = 0.5  # CPU ms per miss per tier
LEADER_LIMIT = 2.0  # stampede leader's first byte <= 2x nginx's


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


def load_baseline(path: Path = BASELINE) -> dict[str, Any] | None:
    """The baseline results, or None when the file is missing."""
    try:
        return dict(json.loads(path.read_text()))
    except FileNotFoundError:
        return None


def judge(results: dict[str, Any], baseline: dict[str, Any] | None = None) -> list[Verdict]:
    """Every target, in the issues' order; hit-path ratios against ``baseline`` last."""
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
    out.append(_stampede_leader(results.get("stampede", {})))
    z2 = results.get("zipf2", {})
    out.append(_zipf2_rate(z2, "cold", ZIPF2_COLD))
    out.append(_zipf2_rate(z2, "warm", ZIPF2_WARM))
    out.append(_zipf2_offload(z2))
    out.append(_misscost(results.get("misscost", {})))
    out.append(_trouble(results))
    if summary:
        out += _against_baseline(summary, baseline)
    return out


def _stampede_leader(stampede: dict[str, Any]) -> Verdict:
    wording = (f"stampede leader's first byte within {LEADER_LIMIT:g}x nginx's (median over "
               f"repetitions of each repetition's median leader TTFB)")

    def leader(name: str) -> float | None:
        values = [r["leader_ttfb_median_s"] for r in stampede.get(name, [])
                  if r.get("leader_ttfb_median_s") is not None]
        return statistics.median(values) if values else None

    edge, nginx = leader(EDGE), leader(NGINX)
    if edge is None or nginx is None:
        return Verdict(wording, None, "not measured")
    value = edge / nginx
    detail = (f"edgeproxy {edge * 1000:.0f} ms vs nginx {nginx * 1000:.0f} ms = {value:.2f}x "
              f"(need <= {LEADER_LIMIT:g}x)")
    chain = leader(CHAIN)
    if chain is not None:
        detail += f"; edge->shield chain {chain * 1000:.0f} ms = {chain / nginx:.2f}x (not judged)"
    return Verdict(wording, value <= LEADER_LIMIT, detail)


def _zipf2_rate(z2: dict[str, Any], name: str, minimum: float) -> Verdict:
    wording = (f"two-tier Zipf mix, {name} window: edgeproxy x2 >= {minimum:g}x nginx x2 req/s")
    mine, theirs = zipf2.window(z2, EDGE, name), zipf2.window(z2, NGINX, name)
    if mine is None or theirs is None or not theirs["rps"]:
        return Verdict(wording, None, "not measured")
    value = mine["rps"] / theirs["rps"]
    detail = (f"{value:.2f}x ({mine['rps']:,.0f} vs {theirs['rps']:,.0f} req/s; p50 "
              f"{mine['p50_ms']:.1f} vs {theirs['p50_ms']:.1f} ms, p99 {mine['p99_ms']:.0f} vs "
              f"{theirs['p99_ms']:.0f} ms) (need >= {minimum:g}x)")
    clean = mine["errors"] == 0 and mine["non_2xx"] == 0
    if not clean:
        detail += f"; edgeproxy had {mine['errors']} errors and {mine['non_2xx']} non-2xx"
    return Verdict(wording, value >= minimum and clean, detail)


def _zipf2_offload(z2: dict[str, Any]) -> Verdict:
    wording = (f"two-tier Zipf mix: same origin offload as nginx x2 (origin requests over both "
               f"windows <= nginx's x {1 + OFFLOAD_SLACK:g} + {OFFLOAD_CONSTANT}, and origin "
               f"requests per object fetched <= nginx's x {1 + OFFLOAD_SLACK:g})")
    servers = z2.get("servers", {})
    mine, theirs = servers.get(EDGE), servers.get(NGINX)
    if not mine or not theirs or not mine["requests_per_object"] \
            or not theirs["requests_per_object"]:
        return Verdict(wording, None, "not measured")
    limit = theirs["origin_requests"] * (1 + OFFLOAD_SLACK) + OFFLOAD_CONSTANT
    per_limit = theirs["requests_per_object"] * (1 + OFFLOAD_SLACK)
    ok = mine["origin_requests"] <= limit and mine["requests_per_object"] <= per_limit

    def side(r: dict[str, Any]) -> str:
        wins = " + ".join(f"{w['origin_requests']:,}" for w in r["windows"])
        return (f"{r['origin_requests']:,} origin requests ({wins} + "
                f"{r['drain_origin_requests']:,} drained) for {r['objects_fetched']:,} objects "
                f"= {r['requests_per_object']:.3f}/object, "
                f"{r['bytes_per_object_byte']:.3f} bytes per object byte")

    return Verdict(wording, ok, f"edgeproxy {side(mine)}; nginx {side(theirs)}")


def _misscost(mc: dict[str, Any]) -> Verdict:
    wording = f"sequential miss through edge -> shield: <= {MISS_CPU_MS:g} ms CPU per miss per tier"
    mine = mc.get("servers", {}).get(EDGE)
    if not mine:
        return Verdict(wording, None, "not measured")
    tiers = mine["tiers"]
    ok = all(tiers[t]["cpu_ms_per_miss"] <= MISS_CPU_MS for t in ("edge", "shield"))
    ok = ok and mine["hits"] == 0 and mine["origin_requests"] == mine["requests"]
    detail = (f"edgeproxy edge {tiers['edge']['cpu_ms_per_miss']:.2f} ms, shield "
              f"{tiers['shield']['cpu_ms_per_miss']:.2f} ms ({mine['requests']} misses, "
              f"{mine['origin_requests']} origin requests, {mine['hits']} edge hits)")
    nginx = mc.get("servers", {}).get(NGINX)
    if nginx:
        nt = nginx["tiers"]
        detail += (f"; nginx edge {nt['edge']['cpu_ms_per_miss']:.2f} ms, shield "
                   f"{nt['shield']['cpu_ms_per_miss']:.2f} ms")
    origin = tiers["origin"]["cpu_ms_per_miss"]
    detail += f"; origin {origin:.2f} ms"
    if origin > 0:
        # the machine's speed cancels out of these (it moved 2x between runs on one VM)
        detail += (f"; per tier {_per_tier(tiers) / origin:.1f}x the origin's own CPU per "
                   "request")
        if nginx:
            detail += f" (nginx {_per_tier(nginx['tiers']) / origin:.1f}x)"
    return Verdict(wording, ok, detail + f" (need <= {MISS_CPU_MS:g})")


def _per_tier(tiers: dict[str, Any]) -> float:
    """CPU ms per miss, the mean of the edge's and the shield's."""
    return float(tiers["edge"]["cpu_ms_per_miss"] + tiers["shield"]["cpu_ms_per_miss"]) / 2


def _against_baseline(summary: list[dict[str, Any]],
                      baseline: dict[str, Any] | None) -> list[Verdict]:
    """One verdict per hit cell: edgeproxy/nginx now >= the baseline's, less the noise.

    The baseline's ratio is the one of its commit's edge in this same run (`BASELINE_RUN`)
    where the hit path measured it, else the one stored in ``baseline`` (another day's).
    """
    if baseline is None:
        return [Verdict("hit-path ratios at least where they were", None,
                        f"no baseline file {BASELINE.name}")]
    before = {r["cell"]: r for r in baseline.get("hit_path", {}).get("summary", [])}
    commit = baseline["meta"].get("commit", "?")
    out = []
    for row in summary:
        wording = (f"{row['label']} @{row['connections']} hits: edgeproxy/nginx at least where "
                   f"it was (baseline {commit}, {BASELINE_NOISE:.0%} noise allowed)")
        now = ratio(row, EDGE, NGINX)
        stored = ratio(before[row["cell"]], EDGE, NGINX) if row["cell"] in before else None
        same_run = ratio(row, BASELINE_RUN, NGINX)
        old = same_run if same_run is not None else stored
        if now is None or old is None:
            out.append(Verdict(wording, None, "not measured now or in the baseline"))
            continue
        floor = old * (1 - BASELINE_NOISE)
        where = (f"{commit} {old:.2f}x in this run" if same_run is not None
                 else f"{old:.2f}x then")
        also = f"; {stored:.2f}x in its stored run" if same_run is not None and stored else ""
        out.append(Verdict(wording, now >= floor,
                           f"{now:.2f}x now vs {where} (need >= {floor:.2f}x{also})"))
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


def _trouble(results: dict[str, Any]) -> Verdict:
    wording = ("no integrity failure or storage fault on any edgeproxy node in the whole run "
               "(long-running servers and the two-tier pairs)")
    seen: dict[str, dict[str, dict[str, float]]] = dict(results.get("trouble", {}))
    for name, server in results.get("zipf2", {}).get("servers", {}).items():
        if "trouble" in server:
            seen[f"zipf2 {name}"] = server["trouble"]
    if not seen:
        return Verdict(wording, None, "not measured")
    bad = [f"{server} {node} {what} {n:g}" for server, nodes in seen.items()
           for node, counts in nodes.items() for what, n in counts.items() if n]
    return Verdict(wording, not bad, "; ".join(bad) if bad else
                   f"none on {sum(len(nodes) for nodes in seen.values())} nodes")


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"

"""edgeproxy side by side with nginx and Varnish: one command, one report.

    python -m benchmarks.compare [--quick]
        [--only hit,profile,late,stampede,memory,zipf,zipf2,misscost]
    python -m benchmarks.compare --rejudge    # the stored run judged and reported again

Starts a bench origin, edgeproxy (edge; and edge → shield), nginx (proxy_cache; and with the
slice module when built in) and Varnish on loopback ports, runs every section, writes
``benchmarks/results/latest.{md,json,png}`` and stops every process it started — also on
errors and Ctrl-C. ``bash benchmarks/run.sh`` installs what is missing first.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import (
    baseline,
    coldpath,
    deploy,
    hitpath,
    hotspots,
    memory,
    misscost,
    procs,
    promstats,
    report,
    targets,
    zipf2,
    zipfmix,
)

SECTIONS = ("hit", "profile", "late", "stampede", "memory", "zipf", "zipf2", "misscost")
RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Plan:
    """How long and how often each section runs."""

    mode: str
    hit_duration: float
    hit_repeats: int
    late_repeats: int
    zipf_seconds: float
    zipf_objects: int
    profile_seconds: float
    memory_clients: int = 64
    stampede_clients: int = 200
    stampede_objects: int = 20
    stampede_repeats: int = 3
    throttle_mibps: float = 50.0
    edge_workers: int = 2
    zipf2_seconds: float = 20.0  # per window (cold, then warm), as the outside measurement
    misscost_requests: int = 2000
    misscost_idle_s: float = 2.0


FULL = Plan("full", hit_duration=5, hit_repeats=3, late_repeats=3, zipf_seconds=30,
            zipf_objects=10_000, profile_seconds=8)
QUICK = Plan("quick", hit_duration=2, hit_repeats=1, late_repeats=2, zipf_seconds=10,
             zipf_objects=10_000, profile_seconds=5, stampede_repeats=1, zipf2_seconds=5,
             misscost_requests=300, misscost_idle_s=1.0)


def _log(message: str) -> None:
    print(message, flush=True)


def _commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True, cwd=deploy.REPO, check=False)
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "edgeproxy"],
                           capture_output=True, text=True, cwd=deploy.REPO, check=False)
    return out.stdout.strip() + ("+dirty edgeproxy/" if dirty.stdout.strip() else "")


def run(plan: Plan, sections: tuple[str, ...], out_dir: Path, keep: bool) -> dict[str, Any]:
    """Start everything, run ``sections``, stop everything; the results."""
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="edgeproxy-bench-"))
    work.chmod(0o755)  # nginx workers (nobody) and Varnish (vcache) must reach their dirs
    notes: list[str] = []
    results: dict[str, Any] = {"meta": {
        "started": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "mode": plan.mode, "commit": _commit(), "versions": deploy.tool_versions(),
        "edge_workers": plan.edge_workers, "varnish_storage": "-s malloc,2g",
        "throttle_mibps": plan.throttle_mibps,
        "command": "bash benchmarks/run.sh" + (" --quick" if plan.mode == "quick" else ""),
        "sections": list(sections), "plan": plan.__dict__,
    }}
    servers: list[deploy.Server] = []
    before: deploy.Server | None = None  # the baseline commit's edge (hit path only)
    origin: deploy.Origin | None = None
    try:
        _log(f"workdir {work}; generating blobs and starting the origin ...")
        origin = deploy.Origin(work, work / "blobs")
        _log("starting edgeproxy (edge), edgeproxy (edge -> shield), nginx, Varnish ...")
        edge = deploy.start_edgeproxy(work, origin.url, workers=plan.edge_workers)
        # One worker per tier: /metrics of a multi-worker node shows one worker only.
        # Two edges share the shield, so the shield sees repeat requests (one edge's misses
        # are the other's); one worker per node, as /metrics of several workers is partial.
        chain = deploy.start_edgeproxy(work, origin.url, name=targets.CHAIN, chain=True,
                                       workers=1, edges=2)
        nginx = deploy.start_nginx(work, origin.url)
        servers = [edge, chain, nginx]
        if deploy.nginx_has_slice():
            servers.append(deploy.start_nginx(work, origin.url, use_slice=True))
        else:
            notes.append("this nginx has no slice module: nginx-slice was not measured")
        servers.append(deploy.start_varnish(work, origin.url))
        hit_servers = [s for s in servers if s is not chain]
        if "hit" in sections:
            before = _start_baseline(work, origin, plan, notes)
            hit_servers += [before] if before is not None else []
        for s in [*hit_servers, chain]:
            _log(f"  {s.name:<18} {s.url}  (pid {s.front.pid})")
        _sections(plan, sections, results, origin, servers, hit_servers, chain, out_dir, work)
    finally:
        for s in reversed([*servers, *([before] if before is not None else [])]):
            s.stop()
        if (work / "baseline-src").exists():
            baseline.remove(work / "baseline-src")
        if origin is not None:
            origin.stop()
        procs.stop_all()
        if keep:
            _log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    results["meta"]["elapsed_s"] = time.monotonic() - started
    results["notes"] = notes + _standing_notes()
    return results


def _start_baseline(work: Path, origin: deploy.Origin, plan: Plan,
                    notes: list[str]) -> deploy.Server | None:
    """The baseline commit's edge for the hit path (`baseline`), or None with a note."""
    stored = targets.load_baseline()
    commit = (stored or {}).get("meta", {}).get("commit")
    if not commit:
        notes.append("no baseline commit: hit-path ratios compared with nothing")
        return None
    why = baseline.checkout(commit, work / "baseline-src")
    if why is not None:
        notes.append(f"the baseline commit {commit} could not be checked out ({why}): "
                     f"\"where it was\" uses the ratios stored in {targets.BASELINE.name}")
        return None
    _log(f"starting the baseline commit {commit}'s edge ...")
    try:
        return deploy.start_edgeproxy(work, origin.url, name=baseline.SERVER,
                                      workers=plan.edge_workers, repo=work / "baseline-src")
    except (RuntimeError, subprocess.CalledProcessError) as exc:  # its code no longer runs here
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        notes.append(f"the baseline commit {commit}'s edge did not start ({first}): \"where "
                     f"it was\" uses the ratios stored in {targets.BASELINE.name}")
        return None


def _sections(plan: Plan, sections: tuple[str, ...], results: dict[str, Any],
              origin: deploy.Origin, servers: list[deploy.Server],
              hit_servers: list[deploy.Server], chain: deploy.Server, out_dir: Path,
              work: Path) -> None:
    edge = hit_servers[0]

    timeline: list[dict[str, Any]] = results.setdefault("rss_timeline", [])
    watched = [s for s in servers if s.kind == "edgeproxy"]

    current = ["start"]

    def step(title: str) -> None:
        _rss_checkpoint(timeline, current[0], watched)  # as the previous section left it
        current[0] = title.split(":")[0].split(" (")[0]
        _log(f"\n== {title} ==")

    if "hit" in sections:
        step("hit path")
        origin.throttle(0)
        our_pids = [*{p.pid for s in [*servers, *hit_servers] for p in s.procs},
                    origin.proc.pid]
        records = hitpath.run_hitpath(hit_servers, origin, duration=plan.hit_duration,
                                      repeats=plan.hit_repeats, log=_log, our_pids=our_pids)
        names = [s.name for s in hit_servers]
        for s in [s for s in hit_servers if s.name == baseline.SERVER]:
            s.stop()  # only the hit path compares with it: later sections go without it
            hit_servers.remove(s)
        kept = [r["foreign_cores"] for r in records]
        tries = [c for r in records for c in r["attempts_foreign_cores"]]
        results["hit_path"] = {
            "duration_s": plan.hit_duration, "repeats": plan.hit_repeats, "servers": names,
            "range": hitpath.RANGE_16M, "runs": records,
            "summary": hitpath.summarize(records, names),
            "interference": {
                "threshold_cores": hitpath.DISTURBED_CORES, "retries": hitpath.RETRIES,
                "retry_budget_share": hitpath.RETRY_BUDGET_SHARE,
                "attempts": len(tries), "runs": len(records),
                "disturbed_attempts": sum(c > hitpath.DISTURBED_CORES for c in tries),
                "kept_disturbed": sum(c > hitpath.DISTURBED_CORES for c in kept),
                "kept_mean_cores": sum(kept) / len(kept) if kept else 0.0,
                "kept_max_cores": max(kept, default=0.0),
            },
        }
    if "profile" in sections:
        step("profiles of the edge (py-spy): 2 KiB hits, 64 KiB range hits, cold Zipf mix")
        origin.throttle(0)
        results["profile"] = [p for p in (
            hotspots.profile_hit_path(edge, origin, out_dir, seconds=plan.profile_seconds,
                                      log=_log),
            hotspots.profile_range_hits(edge, origin, out_dir, seconds=plan.profile_seconds,
                                        log=_log),
            hotspots.profile_miss_mix(edge, origin, out_dir, work,
                                      seconds=plan.profile_seconds, log=_log),
        ) if p is not None]
    origin.throttle(plan.throttle_mibps)
    if "late" in sections:
        step(f"late range on a cold 100 MiB object (origin {plan.throttle_mibps:g} MiB/s)")
        results["late_range"] = {
            s.name: coldpath.late_range(s, origin, repeats=plan.late_repeats, log=_log)
            for s in servers}
    if "stampede" in sections:
        step(f"stampede: {plan.stampede_clients} clients on {plan.stampede_objects} cold "
             f"16 MiB objects")
        # Repetitions interleave the servers; every one uses fresh objects.
        runs: dict[str, list[dict[str, Any]]] = {s.name: [] for s in servers}
        for _rep in range(plan.stampede_repeats):
            for s in servers:
                runs[s.name].append(coldpath.stampede(
                    s, origin, clients=plan.stampede_clients, objects=plan.stampede_objects,
                    log=_log))
        results["stampede"] = runs
    if "memory" in sections:
        step(f"memory: {plan.memory_clients} concurrent 100 MiB downloads")
        results["memory"] = _memory(plan, origin, hit_servers, work)
    if "zipf" in sections:
        step(f"Zipf mix: 2 edges -> shield ({plan.zipf_seconds:g} s)")
        origin.throttle(0)
        results["zipf"] = zipfmix.run_mix(chain, origin, work, objects=plan.zipf_objects,
                                          duration=plan.zipf_seconds, connections=32,
                                          log=_log)
    # The two-tier cells start their own pairs (one at a time) and stop them again.
    long_running = [p.pid for s in servers for p in s.procs] + [origin.proc.pid]
    if "zipf2" in sections:
        step(f"Zipf mix through two tiers, every server: cold then warm "
             f"({plan.zipf2_seconds:g} s each)")
        origin.throttle(0)
        results["zipf2"] = zipf2.run_all(origin, work, objects=plan.zipf_objects,
                                         seconds=plan.zipf2_seconds, connections=32,
                                         workers=plan.edge_workers, our_pids=long_running,
                                         log=_log)
    if "misscost" in sections:
        step(f"sequential miss cost through two tiers ({plan.misscost_requests} misses)")
        origin.throttle(0)
        results["misscost"] = misscost.run_all(origin, work, requests=plan.misscost_requests,
                                               idle_seconds=plan.misscost_idle_s,
                                               workers=plan.edge_workers,
                                               our_pids=long_running, log=_log)
    _rss_checkpoint(timeline, current[0], watched)
    # the long-running servers, after every section: what their nodes counted going wrong
    results["trouble"] = {s.name: promstats.trouble(s.metrics) for s in servers if s.metrics}


def _rss_checkpoint(timeline: list[dict[str, Any]], after: str,
                    servers: list[deploy.Server]) -> None:
    """Record each edgeproxy process tree's RSS now (after section ``after``)."""
    for server in servers:
        for proc in server.procs:
            sampler = memory.RssSampler(proc.pid)
            total = sampler.sample()
            others = [rss for pid, rss in sampler.peak_by_pid.items() if pid != proc.pid]
            timeline.append({"after": after, "process": proc.name,
                             "total_mib": total / memory.MIB,
                             "largest_worker_mib": max(others, default=total) / memory.MIB})


def _memory(plan: Plan, origin: deploy.Origin, hit_servers: list[deploy.Server],
            work: Path) -> list[dict[str, Any]]:
    """RSS under many 100 MiB downloads: a fresh edge first, then the long-running servers."""
    rows = []
    # A newly started edge isolates this load from what earlier sections left in memory.
    fresh = deploy.start_edgeproxy(work, origin.url, name=targets.FRESH,
                                   workers=plan.edge_workers)
    try:
        origin.throttle(plan.throttle_mibps)
        rows.append(memory.peak_rss(fresh, origin, clients=plan.memory_clients, cold=True,
                                    log=_log))
        origin.throttle(0)
        hitpath.warm(fresh, fresh.url + origin.blob("b100m"), {})
        rows.append(memory.peak_rss(fresh, origin, clients=plan.memory_clients, cold=False,
                                    log=_log))
    finally:
        fresh.stop()
    origin.throttle(0)
    for s in hit_servers:  # warm the blob (the hit path may not have run)
        hitpath.warm(s, s.url + origin.blob("b100m"), {})
    rows += [memory.peak_rss(s, origin, clients=plan.memory_clients, cold=False, log=_log)
             for s in hit_servers]
    origin.throttle(plan.throttle_mibps)
    rows += [memory.peak_rss(s, origin, clients=plan.memory_clients, cold=True, log=_log)
             for s in hit_servers]
    return rows


def _standing_notes() -> list[str]:
    return [
        "All processes share the machine's CPUs with the load generator (wrk -t2 or the "
        "Python clients), so absolute numbers are low and noisy; compare ratios within one "
        "run. At GB/s rates wrk itself needs CPU, so a server that spends less CPU per byte "
        "leaves more for the client: large-body ratios partly measure CPU efficiency.",
        "edgeproxy nodes run with log_level: warning and log.access off; nginx has "
        "access_log off; Varnish logs to its shared-memory log as always.",
        "Objects are named by the SHA-256 of their bytes; cold runs use fresh objects, so "
        "every cache is cold for them and no run warms another's object.",
        "The origin paces each response at the stated MiB/s during cold runs; nginx and "
        "Varnish fetch whole objects on a range miss and keep filling after the client "
        "is gone — the next run waits for the origin to go idle.",
    ]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short run (a few minutes)")
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated sections (default: all of {','.join(SECTIONS)})")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    parser.add_argument("--stem", default="latest", help="results file name stem")
    parser.add_argument("--keep-workdir", action="store_true",
                        help="keep the temp dir (configs, logs, caches) for inspection")
    parser.add_argument("--rejudge", action="store_true",
                        help="run nothing: judge the stored <stem>.json again and rewrite its "
                             "report (after a change to the targets' or the report's code)")
    return parser.parse_args(argv)


def _report(results: dict[str, Any], baseline: dict[str, Any] | None,
            args: argparse.Namespace, full: bool) -> list[Path]:
    """Judge ``results`` and write the report (and, for a full run into the results
    directory, the README block). Judged again, a run keeps its chart: it shows the hit
    path's ratios, which no verdict changes (and needs the bench extra, matplotlib)."""
    verdicts = targets.judge(results, baseline)
    paths = report.write(results, verdicts, args.out, args.stem, draw=not args.rejudge)
    if full and args.out.resolve() == RESULTS and args.stem == "latest":
        readme = RESULTS.parent / "README.md"
        if report.update_readme(readme, report.readme_block(results, verdicts)):
            paths.append(readme)
    _log("\n== targets ==")
    for v in verdicts:
        _log(f"{v.word:<5} {v.target}: {v.detail}")
    _log("\nwrote " + ", ".join(str(p) for p in paths))
    return paths


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and write the report; exit status 0 even if targets fail."""
    args = parse_args(argv)
    sections = tuple(s.strip() for s in args.only.split(",") if s.strip())
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        print(f"unknown section(s): {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    if args.rejudge:
        stored = json.loads((args.out / f"{args.stem}.json").read_text())
        stored.pop("targets", None)  # (judged anew)
        meta = stored.get("meta", {})
        _report(stored, targets.load_baseline(), args, meta.get("mode") == "full"
                and set(meta.get("sections", ())) == set(SECTIONS))
        return 0
    missing = deploy.missing_tools()
    if missing:
        print(f"missing: {', '.join(missing)} — run bash benchmarks/run.sh, which installs "
              f"them (apt-get install -y nginx varnish wrk)", file=sys.stderr)
        return 2
    procs.install_cleanup()
    plan = QUICK if args.quick else FULL
    args.out.mkdir(parents=True, exist_ok=True)
    results = run(plan, sections, args.out, args.keep_workdir)
    baseline = targets.load_baseline()
    if baseline is not None:
        results["baseline"] = {"file": str(targets.BASELINE.relative_to(deploy.REPO)),
                               **{k: baseline["meta"].get(k) for k in ("started", "commit",
                                                                        "mode")}}
    _report(results, baseline, args, plan.mode == "full" and set(sections) == set(SECTIONS))
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())

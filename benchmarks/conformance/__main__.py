"""Run the cache-tests suite against edgeproxy (and references); write results.md / .json.

    python -m benchmarks.conformance --suite ~/src/cache-tests              # chain and edge
    python -m benchmarks.conformance --suite ... --targets chain,edge,nginx,origin
    python -m benchmarks.conformance --suite ... --targets chain --id freshness-max-age
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from ..procs import install_cleanup
from . import client, stacks, summary

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent


def _git(path: Path, *args: str) -> str:
    out = subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True,
                         check=False)
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.conformance", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", type=Path, default=os.environ.get("CACHE_TESTS_DIR"),
                   help="a checkout of github.com/http-tests/cache-tests "
                        "(default: $CACHE_TESTS_DIR)")
    p.add_argument("--targets", default="chain,edge",
                   help=f"comma-separated, run in this order: {', '.join(stacks.TARGETS)}")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the generated edgeproxy config, e.g. "
                        "cache.stale_if_error=1d (repeatable)")
    p.add_argument("--id", default="", help="run one test and print what both sides saw")
    p.add_argument("--out", type=Path, default=HERE, help="where results.md/.json go")
    p.add_argument("--fail-under", type=int, default=0, metavar="N",
                   help="exit 1 if an edgeproxy target passes fewer than N tests (for CI)")
    p.add_argument("--gate", action="store_true",
                   help="exit 1 if an edgeproxy target fails a required test of the partial, "
                        "invalidation or freshness groups (issue 8's gate)")
    p.add_argument("--keep-workdir", action="store_true",
                   help="keep configs, logs, caches and raw results (path printed)")
    args = p.parse_args()
    if args.suite is None or not (args.suite / "tests" / "index.mjs").is_file():
        p.error("--suite must name a cache-tests checkout (with tests/index.mjs)")
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = [t for t in args.targets if t not in stacks.TARGETS]
    if unknown:
        p.error(f"unknown target(s) {', '.join(unknown)}; known: {', '.join(stacks.TARGETS)}")
    return args


def _verdict(args: argparse.Namespace, results: dict[str, dict[str, Any]]) -> int:
    """The exit status the --fail-under and --gate thresholds give."""
    status = 0
    for target, result in results.items():
        if target not in ("chain", "edge"):
            continue
        passed = result["summary"]["passed"]
        if passed < args.fail_under:
            print(f"FAIL {target}: {passed} passed, fewer than {args.fail_under}", file=sys.stderr)
            status = 1
        verdict = summary.gate(result["groups"])
        if args.gate and not verdict["pass"]:
            groups = ", ".join(g for g, n in verdict["groups"].items() if n)
            print(f"FAIL {target}: required tests not passed in {groups}", file=sys.stderr)
            status = 1
    return status


def main() -> int:
    """Entry point; returns the exit status."""
    args = _parse()
    install_cleanup()
    suite = args.suite.resolve()
    work = Path(tempfile.mkdtemp(prefix="cache-tests-"))
    work.chmod(0o755)  # nginx workers (nobody, when run as root) must reach their cache dir
    results: dict[str, dict[str, Any]] = {}
    configs: dict[str, Any] = {}
    try:
        copy = client.prepare(suite, work)
        for target in args.targets:
            print(f"== {target}: {stacks.TARGETS[target]}", file=sys.stderr, flush=True)
            raw = work / f"raw-{target}.json"
            with stacks.running(target, suite, work / target, args.set) as stack:
                proc = client.run(copy, stack.base, raw, args.id)
                if stack.config:  # as recorded: the temp dir is not worth keeping
                    configs[target] = {**stack.config, "data_dir": "<temp dir>"}
            if args.id:
                print(proc.stdout, proc.stderr, sep="\n")
                continue
            records = summary.classify(suite, raw)
            results[target] = {"target": stacks.TARGETS[target],
                               "summary": summary.score(records),
                               "groups": summary.by_group(records), "tests": records}
            s = results[target]["summary"]
            print(f"   {target}: {s['passed']} of {s['scored']} passed", file=sys.stderr)
        if args.id:
            return 0
        meta = {
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "edgeproxy commit": _git(ROOT, "log", "-1", "--format=%h", "--", "edgeproxy"),
            "suite commit": _git(suite, "rev-parse", "--short", "HEAD"),
            "targets": "; ".join(f"{t} = {stacks.TARGETS[t]}" for t in results),
            "command": "bash benchmarks/conformance/run.sh --targets "
                       + ",".join(args.targets) + "".join(f" --set {s}" for s in args.set),
        }
        refs = summary.references(suite, work)
        detail = [t for t in results if t in ("chain", "edge")] or list(results)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.md").write_text(summary.render(meta, results, refs, detail))
        doc = {"meta": meta, "edgeproxy_config": configs, "results": results,
               "references": refs,
               "gate": {t: summary.gate(r["groups"]) for t, r in results.items()}}
        (args.out / "results.json").write_text(summary.to_json(doc))
        print(f"wrote {args.out / 'results.md'} and results.json", file=sys.stderr)
        return _verdict(args, results)
    finally:
        if args.keep_workdir:
            print(f"work dir kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

"""Scores of a cache-tests run, judged with the suite's own rules, as Markdown and JSON.

The suite scores a cache by its ✅ count: required and optimal tests that passed, with a test
whose dependency did not pass counted as ⚪ (`determineTestResult` in the suite's
``test-engine/lib/results.mjs``, which ``classify.mjs`` calls). "check" tests only record a
behaviour (yes/no) and are not scored. With the suite's 370 tests that is 270 scored tests, 265
of them run against a proxy (five are browser-only): the published 202 of Apache Traffic Server
and 158 of nginx are this count.
"""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

Record = dict[str, Any]

SYMBOL = {
    "pass": "✅", "fail": "⛔️", "optional_fail": "⚠️", "yes": "Y", "no": "N",
    "setup_fail": "🔹", "harness_fail": "⁉️", "dependency_fail": "⚪️", "retry": "↻",
    "untested": "-",
}
SCORED_KINDS = ("required", "optimal")
# The groups the product must pass every required test of (issue: Range, invalidation,
# freshness). Freshness is every suite whose name says so.
GATE_GROUPS = ("partial", "invalidation", "cc-freshness", "expires", "heuristic")
# Published results shipped with the suite (results/<name>.json), shown beside ours.
REFERENCES = ("trafficserver", "apache", "squid", "caddy", "varnish", "nginx")


def classify(suite: Path, raw: Path) -> list[Record]:
    """One record per test of the suite (id, suite, kind, outcome, error), via classify.mjs."""
    out = subprocess.run(["node", str(HERE / "classify.mjs"), str(suite), str(raw)],
                         check=True, capture_output=True, text=True)
    records: list[Record] = json.loads(out.stdout)
    return records


def scored(records: Iterable[Record]) -> list[Record]:
    """The tests the suite scores: required and optimal ones that were run."""
    return [r for r in records if r["kind"] in SCORED_KINDS and r["outcome"] != "untested"]


def score(records: Sequence[Record]) -> dict[str, int]:
    """Passed / scored, plus every outcome's count, over ``records``."""
    counted = scored(records)
    outcomes = Counter(r["outcome"] for r in counted)
    checks = Counter(r["outcome"] for r in records if r["kind"] == "check")
    return {
        "passed": outcomes["pass"],
        "scored": len(counted),
        "not_passed": len(counted) - outcomes["pass"],
        "required_failed": sum(1 for r in counted
                               if r["kind"] == "required" and r["outcome"] == "fail"),
        "required_not_passed": sum(1 for r in counted
                                   if r["kind"] == "required" and r["outcome"] != "pass"),
        "required": sum(1 for r in counted if r["kind"] == "required"),
        "optional_failed": outcomes["optional_fail"],
        "dependency_failed": outcomes["dependency_fail"],
        "setup_failed": outcomes["setup_fail"],
        "harness_failed": outcomes["harness_fail"] + outcomes["retry"],
        "checks_yes": checks["yes"],
        "checks_no": checks["no"],
    }


def by_group(records: Sequence[Record]) -> dict[str, dict[str, Any]]:
    """`score` of each suite (group), in suite order."""
    groups: dict[str, list[Record]] = {}
    names: dict[str, str] = {}
    for r in records:
        groups.setdefault(r["suite"], []).append(r)
        names[r["suite"]] = r["suite_name"]
    return {gid: {"name": names[gid], **score(rs)} for gid, rs in groups.items()}


def references(suite: Path, work: Path) -> dict[str, dict[str, Any]]:
    """Scores of the published results shipped in the suite checkout."""
    refs: dict[str, dict[str, Any]] = {}
    for name in REFERENCES:
        raw = suite / "results" / f"{name}.json"
        if raw.is_file():
            records = classify(suite, raw)
            refs[name] = {"summary": score(records), "groups": by_group(records)}
    return refs


def message(record: Record) -> str:
    """The suite's own failure message of a test (and the dependency that did not pass)."""
    parts = []
    if record["outcome"] == "dependency_fail":
        parts.append(f"depends on {', '.join(record['depends_on'])}, which did not pass")
    error = record.get("error")
    if isinstance(error, list) and error:
        parts.append(": ".join(str(e) for e in error))
    return "; ".join(parts) if parts else ""


def gate(groups: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Whether every required test of the gate groups passed."""
    per_group = {g: groups[g]["required_not_passed"] for g in GATE_GROUPS if g in groups}
    return {"groups": per_group, "pass": all(v == 0 for v in per_group.values())}


def _cell(s: Mapping[str, Any]) -> str:
    return f"{s['passed']}/{s['scored']}" + (
        f" ({s['required_failed']}⛔)" if s["required_failed"] else "")


def render(meta: Mapping[str, Any], results: Mapping[str, Mapping[str, Any]],
           refs: Mapping[str, Mapping[str, Any]], detail: Sequence[str]) -> str:
    """results.md: scores side by side, the gate, per-group scores, failing tests of ``detail``."""
    lines = ["# HTTP cache conformance (cache-tests.fyi suite)", ""]
    lines += [f"- {k}: {v}" for k, v in meta.items()]
    lines += ["", "Score = ✅ count, the suite's own: required and optimal tests that passed "
              "(a test whose dependency did not pass counts ⚪). Checks (Y/N) only record "
              "behaviour. References are the published results shipped with the suite.", "",
              "## Score", "",
              "| cache | ✅ passed | scored | ⛔ required fail | ⚠️ optional fail | ⚪ dependency "
              "| 🔹 setup | ⁉️/↻ harness | checks Y/N |", "|---|---|---|---|---|---|---|---|---|"]
    rows = [(name, r["summary"]) for name, r in results.items()]
    rows += [(f"{name} (published)", r["summary"]) for name, r in refs.items()]
    for name, s in rows:
        lines.append(f"| {name} | **{s['passed']}** | {s['scored']} | {s['required_failed']} | "
                     f"{s['optional_failed']} | {s['dependency_failed']} | {s['setup_failed']} | "
                     f"{s['harness_failed']} | {s['checks_yes']}/{s['checks_no']} |")
    lines += ["", "## Gate: every required test passes in the Range (partial), invalidation and "
              "freshness groups", "", "| cache | " + " | ".join(GATE_GROUPS) + " | gate |",
              "|---|" + "---|" * (len(GATE_GROUPS) + 1)]
    for name, r in [*results.items(), *((f"{n} (published)", v) for n, v in refs.items())]:
        g = gate(r["groups"])
        cells = [f"{r['groups'][x]['required'] - g['groups'][x]}/{r['groups'][x]['required']}"
                 for x in GATE_GROUPS if x in g["groups"]]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {'PASS' if g['pass'] else 'FAIL'} |")
    names = [*results, *refs]
    first = next(iter(results.values()))
    lines += ["", "## Per group", "", "✅ passed / scored (⛔ required failures)", "",
              "| group | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for gid, g in first["groups"].items():
        cells = [_cell(r["groups"][gid]) if gid in r["groups"] else "-"
                 for r in [*results.values(), *refs.values()]]
        lines.append(f"| {g['name']} (`{gid}`) | " + " | ".join(cells) + " |")
    for name in detail:
        if name in results:
            lines += _failures(name, results[name]["tests"])
    return "\n".join(lines) + "\n"


def _failures(name: str, records: Sequence[Record]) -> list[str]:
    lines = ["", f"## Tests not passed: {name}", ""]
    failing = [r for r in scored(records) if r["outcome"] != "pass"]
    lines.append(f"{len(failing)} scored tests did not pass. Kind: R = required, O = optimal. "
                 "\"alone\" is the test's own result when its dependencies are ignored.")
    group = None
    for r in failing:
        if r["suite"] != group:
            group = r["suite"]
            lines += ["", f"### {r['suite_name']} (`{group}`)", "", "| test | kind | result | "
                      "message |", "|---|---|---|---|"]
        text = message(r).replace("|", "\\|").replace("\n", " ")
        result = SYMBOL[r["outcome"]]
        alone = str(r.get("outcome_alone", r["outcome"]))
        if alone != r["outcome"]:
            result += f" (alone: {SYMBOL.get(alone, alone)})"
        lines.append(f"| `{r['id']}` | {r['kind'][0].upper()} | {result} | {text} |")
    return lines


def to_json(doc: Mapping[str, Any]) -> str:
    """``doc`` as indented JSON, but with each test record on one line (diffable, compact)."""
    placeholders: dict[str, str] = {}
    results = {}
    for target, result in doc["results"].items():
        mark = f"@@tests-{target}@@"
        placeholders[json.dumps(mark)] = "[\n" + ",\n".join(
            json.dumps({k: v for k, v in r.items() if k not in ("name", "suite_name")},
                       ensure_ascii=False) for r in result["tests"]) + "\n]"
        results[target] = {**result, "tests": mark}
    text = json.dumps({**doc, "results": results}, indent=1, ensure_ascii=False)
    for mark, rendered in placeholders.items():
        text = text.replace(mark, rendered)
    return text + "\n"

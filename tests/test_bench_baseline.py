"""The baseline commit measured beside today's edge: its checkout, its own config, and the
"at least where it was" verdicts that prefer its same-run ratio over the stored one."""

from __future__ import annotations

import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from benchmarks import baseline, deploy
from benchmarks.targets import BASELINE_NOISE, BASELINE_RUN, EDGE, NGINX, _against_baseline


def _row(cell: str, **rps: float) -> dict[str, Any]:
    return {"cell": cell, "label": cell, "connections": 16, "metric": "rps",
            "servers": {name: {"rps": value} for name, value in rps.items()}}


def _stored(**cells: float) -> dict[str, Any]:
    """A stored baseline whose edgeproxy/nginx ratio per cell is the given value."""
    return {"meta": {"commit": "d56c2de"}, "hit_path": {"summary": [
        _row(cell, **{EDGE: ratio * 100, NGINX: 100}) for cell, ratio in cells.items()]}}


_SERVERS = {"edgeproxy": EDGE, "baseline": BASELINE_RUN}


@pytest.mark.parametrize(("now", "same_run", "stored", "ok", "quoted"), [
    # the same run's baseline ratio decides, the stored one is only quoted
    (0.96, 0.99, 1.34, True, "d56c2de 0.99x in this run"),
    (0.90, 0.99, 0.50, False, "d56c2de 0.99x in this run"),
    # within the allowed noise of the same-run ratio
    (0.99 * (1 - BASELINE_NOISE) + 0.001, 0.99, 2.0, True, "in this run"),
    # no same-run column (the commit could not be checked out): the stored ratio decides
    (0.96, None, 1.34, False, "1.34x then"),
    (0.96, None, 0.90, True, "0.90x then"),
])
def test_where_it_was_prefers_the_same_run(now: float, same_run: float | None, stored: float,
                                           ok: bool, quoted: str) -> None:
    rps = {EDGE: now * 1000, NGINX: 1000.0}
    if same_run is not None:
        rps[BASELINE_RUN] = same_run * 1000
    [verdict] = _against_baseline([_row("c", **rps)], _stored(c=stored))
    assert verdict.passed is ok
    assert quoted in verdict.detail
    if same_run is not None:
        assert f"{stored:.2f}x in its stored run" in verdict.detail


def test_a_cell_measured_nowhere_is_not_judged() -> None:
    [verdict] = _against_baseline([_row("c", **{EDGE: 900.0, NGINX: 1000.0})], _stored())
    assert verdict.passed is None


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
                          cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def test_checkout_makes_a_worktree_of_the_commit_and_removes_it(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "marker").write_text("then")
    _git(repo, "add", "marker")
    _git(repo, "commit", "-q", "-m", "then")
    then = _git(repo, "rev-parse", "--short", "HEAD")
    (repo / "marker").write_text("now")
    _git(repo, "commit", "-q", "-am", "now")

    dest = tmp_path / "tree"
    assert baseline.checkout(then, dest, repo) is None
    assert (dest / "marker").read_text() == "then"
    baseline.remove(dest, repo)
    assert not dest.exists()
    assert len(_git(repo, "worktree", "list").splitlines()) == 1  # only the main tree

    why = baseline.checkout("0" * 40, tmp_path / "none", repo)
    assert why  # a commit the clone lacks (a shallow clone): the reason, not an exception


def test_another_commit_writes_its_config_with_its_own_code(tmp_path: Path) -> None:
    """Config keys change between commits: the baseline's node gets the config its own
    `benchmarks.deploy` writes, not today's."""
    other = tmp_path / "other"
    (other / "benchmarks").mkdir(parents=True)
    (other / "benchmarks" / "__init__.py").write_text("")
    (other / "benchmarks" / "deploy.py").write_text(
        "def _edgeproxy_config(path, data_dir, edge_port, shield_port, origin_url, workers):\n"
        "    path.write_text(f'old-format {data_dir} {edge_port} {shield_port} "
        "{origin_url} {workers}')\n")
    config = tmp_path / "config.yaml"
    deploy._config_of(other, config, tmp_path / "data", 1, 2, "http://o", 3)
    assert config.read_text() == f"old-format {tmp_path / 'data'} 1 2 http://o 3"

    deploy._config_of(deploy.REPO, config, tmp_path / "data", 1, 2, "http://o", 3)
    assert "old-format" not in config.read_text()  # today's own writer for this checkout


@pytest.mark.parametrize("failure", ["checkout", "start"])
def test_a_baseline_that_cannot_run_leaves_a_note_not_a_failed_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: str) -> None:
    """The hit path then runs without it, and the stored ratios decide (said in the notes)."""
    from benchmarks import compare

    def checkout(commit: str, dest: Path, repo: Path = deploy.REPO) -> str | None:
        return "fatal: reference is not a tree" if failure == "checkout" else None

    def start(*args: Any, **kwargs: Any) -> deploy.Server:
        raise RuntimeError("edgeproxy-baseline-edge exited with 2:\nconfig error")

    monkeypatch.setattr(baseline, "checkout", checkout)
    monkeypatch.setattr(deploy, "start_edgeproxy", start)
    notes: list[str] = []
    origin = SimpleNamespace(url="http://127.0.0.1:9")
    assert compare._start_baseline(tmp_path, origin, compare.QUICK, notes) is None  # type: ignore[arg-type]
    [note] = notes
    assert "baseline-issue8.json" in note
    assert ("could not be checked out" if failure == "checkout" else "did not start") in note


def _miss_result(edge: float, shield: float, origin: float) -> dict[str, Any]:
    tiers = {"edge": {"cpu_ms_per_miss": edge}, "shield": {"cpu_ms_per_miss": shield},
             "origin": {"cpu_ms_per_miss": origin}}
    return {"tiers": tiers, "hits": 0, "requests": 2000, "origin_requests": 2000}


def test_the_miss_cost_verdict_gives_the_cost_against_the_origin_s_own() -> None:
    """The target is absolute; its line also gives each tier's cost in the origin's, which
    the machine's speed (2x between runs on one VM) cancels out of."""
    from benchmarks.targets import _misscost

    verdict = _misscost({"servers": {EDGE: _miss_result(1.63, 1.67, 0.35),
                                     NGINX: _miss_result(0.20, 0.19, 0.35)}})
    assert verdict.passed is False
    assert "origin 0.35 ms; per tier 4.7x the origin's own CPU per request (nginx 0.6x)" \
        in verdict.detail
    assert verdict.detail.endswith("(need <= 0.5)")
    assert _misscost({"servers": {EDGE: _miss_result(0.45, 0.4, 0.3)}}).passed is True


def test_rejudge_rewrites_a_stored_run_s_report_without_running_anything(tmp_path: Path) -> None:
    """``--rejudge`` judges a stored results file again (after a change to the targets' or
    the report's code) and rewrites its report; nothing is started."""
    import json
    import shutil

    from benchmarks import compare

    stored = Path(compare.RESULTS) / "latest.json"
    shutil.copy(stored, tmp_path / "run.json")
    before = json.loads(stored.read_text())
    assert compare.main(["--rejudge", "--out", str(tmp_path), "--stem", "run"]) == 0
    after = json.loads((tmp_path / "run.json").read_text())
    assert after["meta"] == before["meta"]  # the run's own record is kept
    assert len(after["targets"]) == len(before["targets"])
    report = (tmp_path / "run.md").read_text()
    assert f"commit `{before['meta']['commit']}`" in report
    assert "the origin's own CPU per request" in report  # this round's wording
    assert not (tmp_path / "run.png").exists()  # the chart (hit-path ratios) stands

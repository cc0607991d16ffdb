"""The suite's command-line client (``test-engine/cli.mjs``), run from a private copy.

The client imports ``undici`` for the interim-response tests; the suite checkout stays
untouched: its ``tests/`` and ``test-engine/`` are copied into the run's work dir, next to a
``node_modules`` that npm fills once in an ignored folder here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent
NPM_DIR = HERE / ".npm"  # ignored by git (see .gitignore here)
UNDICI = "undici@^7.4.0"  # the range the suite's package.json asks for
CLI_TIMEOUT = 1200.0  # seconds; a full run takes one to three minutes


def prepare(suite: Path, work: Path) -> Path:
    """A runnable copy of the suite's client in ``work``; installs undici on first use."""
    if not (NPM_DIR / "node_modules" / "undici").is_dir():
        NPM_DIR.mkdir(exist_ok=True)
        (NPM_DIR / "package.json").write_text('{"private": true}\n')
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--ignore-scripts",
                        "--prefix", str(NPM_DIR), UNDICI], check=True)
    copy = work / "suite"
    if copy.exists():
        shutil.rmtree(copy)
    copy.mkdir(parents=True)
    for part in ("tests", "test-engine", "asset"):
        if (suite / part).is_dir():
            shutil.copytree(suite / part, copy / part)
    (copy / "node_modules").symlink_to(NPM_DIR / "node_modules", target_is_directory=True)
    return copy


def run(copy: Path, base: str, out: Path, test_id: str = "") -> subprocess.CompletedProcess[str]:
    """Run the client against ``base``; the JSON results (all tests) go to ``out``.

    With ``test_id`` the client runs that one test and prints the requests and responses
    both sides saw, for debugging; the output is returned, not parsed.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("npm_", "EDGEPROXY_"))}
    env |= {"npm_config_base": base, "npm_package_config_id": test_id, "npm_config_id": test_id}
    proc = subprocess.run(["node", "--no-warnings", str(copy / "test-engine" / "cli.mjs")],
                          env=env, cwd=copy, capture_output=True, text=True,
                          timeout=CLI_TIMEOUT, check=False)
    if not test_id:
        if proc.returncode != 0:
            raise RuntimeError(f"cache-tests client failed ({proc.returncode}):\n{proc.stderr}")
        json.loads(proc.stdout)  # fail here, not later, if the output is not the results
        out.write_text(proc.stdout)
    return proc

"""The baseline commit's edge, measured in the same run as today's.

"Every hit-path ratio at least where it is today" (issue 8) compares edgeproxy/nginx now with
edgeproxy/nginx at the commit the issue started from. A ratio stored from another day's run
carries that day's machine: the baseline commit itself, run again side by side with nginx,
measured 0.96-0.99x on 16 MiB hits where its stored run had 1.22-1.34x. So the hit section
also runs that commit's edge, checked out into a worktree of this repository, and the
"where it was" verdicts compare the two ratios of one run (`targets`); the stored file is the
fallback when the commit cannot be checked out (a shallow clone, an exported tree).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from .deploy import REPO

SERVER = "edgeproxy-baseline"


def checkout(commit: str, dest: Path, repo: Path = REPO) -> str | None:
    """Check ``commit`` of ``repo`` out at ``dest`` (a detached worktree); None, or why it
    could not."""
    done = subprocess.run(["git", "worktree", "add", "--detach", str(dest), commit],
                          cwd=repo, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return (done.stderr.strip().splitlines() or ["git worktree add failed"])[-1]
    return None


def remove(dest: Path, repo: Path = REPO) -> None:
    """Remove the worktree made by `checkout` (and git's record of it)."""
    subprocess.run(["git", "worktree", "remove", "--force", str(dest)], cwd=repo,
                   capture_output=True, check=False)

"""`edgeproxy up` and `Stack`: real child processes, real sockets, no orphans."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from edgeproxy.cli.stack import Stack, StackError
from tests.servers import write_stack_config

ROLES = ("origin", "shield", "edge")


def write_config(tmp_path: Path) -> tuple[Path, dict[str, int]]:
    """A config for a loopback stack on free ports, with its data under ``tmp_path``."""
    return write_stack_config(tmp_path)


@pytest.fixture
def config(tmp_path: Path) -> tuple[Path, dict[str, int]]:
    return write_config(tmp_path)


def healthz(port: int) -> int:
    with httpx.Client(trust_env=False, timeout=2) as client:
        return client.get(f"http://127.0.0.1:{port}/healthz").status_code


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def alive(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def wait_gone(pids: list[int], timeout: float = 15) -> list[int]:
    """The PIDs still alive after ``timeout`` seconds (empty if all are gone)."""
    deadline = time.monotonic() + timeout
    while (left := [p for p in pids if alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


class Up:
    """`edgeproxy up` as a subprocess with its stdout/stderr in files."""

    def __init__(self, config: Path, tmp_path: Path) -> None:
        self.out_path, self.err_path = tmp_path / "up.out", tmp_path / "up.err"
        with self.out_path.open("wb") as out, self.err_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "edgeproxy", "up", "--config", str(config)],
                stdout=out, stderr=err, stdin=subprocess.DEVNULL,
            )
        self.pids: dict[str, int] = {}

    @property
    def stdout(self) -> str:
        return self.out_path.read_text()

    @property
    def stderr(self) -> str:
        return self.err_path.read_text()

    def wait_ready(self, timeout: float = 30) -> dict[str, int]:
        deadline = time.monotonic() + timeout
        while "Press Ctrl-C" not in self.stdout:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"up did not start:\n{self.stdout}\n{self.stderr}")
            time.sleep(0.05)
        self.pids = {m[0]: int(m[1]) for m in re.findall(r"(\w+)\s+http://\S+\s+\(pid (\d+)\)",
                                                           self.stdout)}  # fmt: skip
        assert set(self.pids) == set(ROLES), self.stdout
        return self.pids

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def up(config: tuple[Path, dict[str, int]], tmp_path: Path) -> Iterator[Up]:
    runner = Up(config[0], tmp_path)
    yield runner
    runner.kill()
    # Whatever a test did, leave no node behind for the next one.
    for pid in runner.pids.values():
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_up_serves_all_nodes_and_stops_them_on_signal(
    up: Up, config: tuple[Path, dict[str, int]], sig: signal.Signals
) -> None:
    ports = config[1]
    pids = up.wait_ready()
    for role in ROLES:
        assert healthz(ports[role]) == 200, role
        assert f"http://127.0.0.1:{ports[role]}" in up.stdout
    children = {p.pid for p in psutil.Process(up.proc.pid).children()}
    assert children == set(pids.values())

    up.proc.send_signal(sig)
    assert up.proc.wait(timeout=20) == 0, up.stderr
    assert wait_gone(list(pids.values()), timeout=1) == []
    assert not any(port_open(port) for port in ports.values())
    assert "Traceback" not in up.stderr


def test_up_stops_the_rest_and_fails_when_a_node_dies(
    up: Up, config: tuple[Path, dict[str, int]]
) -> None:
    pids = up.wait_ready()
    os.kill(pids["shield"], signal.SIGKILL)
    code = up.proc.wait(timeout=20)
    assert code != 0
    assert wait_gone(list(pids.values()), timeout=1) == []
    assert "shield" in up.stderr and "exited" in up.stderr
    assert not any(port_open(port) for port in config[1].values())


def test_nodes_exit_by_themselves_when_up_is_killed(up: Up) -> None:
    # SIGKILL leaves `up` no chance to clean up; each node notices its parent is gone.
    pids = up.wait_ready()
    up.proc.kill()
    up.proc.wait()
    assert wait_gone(list(pids.values()), timeout=15) == []


def test_stack_context_manager(config: tuple[Path, dict[str, int]]) -> None:
    path, ports = config
    with Stack(path) as stack:
        assert stack.urls == {role: f"http://127.0.0.1:{ports[role]}" for role in ROLES}
        pids = list(stack.pids.values())
        assert all(healthz(port) == 200 for port in ports.values())
        assert stack.poll() is None
    assert wait_gone(pids, timeout=1) == []
    assert stack.nodes == []
    stack.stop()  # idempotent


def test_stack_refuses_a_port_in_use(config: tuple[Path, dict[str, int]]) -> None:
    path, ports = config
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", ports["shield"]))
        busy.listen()
        with pytest.raises(StackError, match=r"shield: port \d+ on 127.0.0.1 is already in use"):
            Stack(path).start()
    assert not port_open(ports["origin"])


def test_stack_names_the_node_that_failed_to_start(config: tuple[Path, dict[str, int]]) -> None:
    path, ports = config
    # Bound but not listening: the pre-check cannot connect, but the edge cannot bind either.
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", ports["edge"]))
        stack = Stack(path, startup_timeout=20)
        with pytest.raises(StackError) as info:
            stack.start()
    message = str(info.value)
    assert message.startswith("edge exited with code")
    assert "address already in use" in message.lower()
    assert stack.nodes == []
    assert not port_open(ports["origin"]) and not port_open(ports["shield"])


def test_stack_times_out_naming_the_node(config: tuple[Path, dict[str, int]]) -> None:
    path, ports = config
    with pytest.raises(StackError, match=r"^origin did not answer 200 on .*/healthz within 0\.01s"):
        Stack(path, startup_timeout=0.01).start()
    time.sleep(0.2)
    assert not any(port_open(port) for port in ports.values())


def test_multi_worker_node_leaves_no_workers_behind(tmp_path: Path) -> None:
    path, ports = write_config(tmp_path)
    path.write_text(path.read_text().replace("edge: {", "edge: {workers: 2, "))
    with Stack(path) as stack:
        edge = psutil.Process(stack.pids["edge"])
        deadline = time.monotonic() + 15
        while len(workers := edge.children(recursive=True)) < 2:
            assert time.monotonic() < deadline, "uvicorn did not start 2 workers"
            time.sleep(0.05)
        assert healthz(ports["edge"]) == 200
        everything = [stack.pids[r] for r in ROLES] + [w.pid for w in workers]
    assert wait_gone(everything, timeout=1) == []


def test_demo_runs_end_to_end(config: tuple[Path, dict[str, int]], tmp_path: Path) -> None:
    path, ports = config
    proc = subprocess.run([sys.executable, "-m", "edgeproxy", "demo", "--config", str(path)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "X-Cache: MISS from edge" in out and "X-Cache: HIT from edge" in out
    assert "equal to the original's slice: True" in out
    assert f"curl -r 16-131103 -o part.enc http://127.0.0.1:{ports['edge']}/v/t1/" in out
    assert out.rstrip().endswith("Demo OK.")
    demo = tmp_path / "var" / "demo"
    assert (demo / "range.bin").stat().st_size == 99000
    assert not any(port_open(port) for port in ports.values())


def test_up_sweeps_the_workers_of_a_node_that_died(tmp_path: Path) -> None:
    # A SIGKILLed uvicorn supervisor leaves its workers running; `up` must stop them too.
    path, ports = write_config(tmp_path)
    path.write_text(path.read_text().replace("edge: {", "edge: {workers: 2, "))
    runner = Up(path, tmp_path)
    everything: list[int] = []
    try:
        pids = runner.wait_ready()
        edge = psutil.Process(pids["edge"])
        deadline = time.monotonic() + 15
        while len(workers := edge.children(recursive=True)) < 2:
            assert time.monotonic() < deadline, "uvicorn did not start 2 workers"
            time.sleep(0.05)
        everything = list(pids.values()) + [w.pid for w in workers]
        os.kill(pids["edge"], signal.SIGKILL)
        assert runner.proc.wait(timeout=20) != 0
        assert wait_gone(everything, timeout=1) == []
        assert not any(port_open(port) for port in ports.values())
    finally:
        runner.kill()
        for pid in everything:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)

"""Run one edgeproxy node (origin, shield or edge) under uvicorn.

`run_node` serves the app of one role on the host/port from `Config`. With ``workers > 1``
uvicorn must import the app in each worker process, so it is given the import string of
`app_from_env`, a factory that rebuilds the app from ``EDGEPROXY_CONFIG`` and ``EDGEPROXY_ROLE``
(and ``EDGEPROXY_UPSTREAM``) which `run_node` sets before forking.

Around the role's app (`node_app`): the access log (`edgeproxy.accesslog`) and ``/readyz``,
drain on SIGTERM and reload on SIGHUP (`edgeproxy.lifecycle`). The listener serves HTTPS when
the role's ``tls`` section says so (`edgeproxy.tls`). Every process logs with a timestamp and a
level to stderr; access lines go to stdout or ``log.file``. With several workers the metrics are
shared through files (`edgeproxy.workermetrics`), and the parent passes SIGHUP on to each
worker, which reloads in place, instead of uvicorn's default of replacing the workers.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import gcsettle, workermetrics
from .accesslog import AccessLog, Sink
from .config import Config, load_config
from .errors import AnswerCut, ConfigError, HTTPError
from .guard import RequestGuard, uvicorn_http_options
from .lifecycle import Lifecycle
from .tls import server_options

log = logging.getLogger("edgeproxy.server")

ROLES = ("origin", "shield", "edge")

ENV_CONFIG = "EDGEPROXY_CONFIG"
ENV_ROLE = "EDGEPROXY_ROLE"
ENV_UPSTREAM = "EDGEPROXY_UPSTREAM"
# These share the EDGEPROXY_ prefix with config overrides (EDGEPROXY_EDGE__PORT) but are not
# settings: `load_config` would reject them as unknown keys, so they are hidden from it.
_RUNNER_ENV = frozenset({ENV_ROLE, ENV_UPSTREAM})

LOG_FORMAT = "%(asctime)s.%(msecs)03d %(levelname)s %(name)s: %(message)s"
LOG_DATE_FORMAT = "%Y-%m-%dT%H:%M:%S"
_LEVELS = {"critical": 50, "error": 40, "warning": 30, "info": 20, "debug": 10, "trace": 5}


def config_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment as `load_config` should see it: without the runner's own variables."""
    source = os.environ if env is None else env
    return {k: v for k, v in source.items() if k not in _RUNNER_ENV}


def check_role(role: str) -> str:
    """``role`` if it names a node role, else `ConfigError`."""
    if role not in ROLES:
        raise ConfigError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
    return role


def listen_address(config: Config, role: str) -> tuple[str, int]:
    """The host and port ``role`` listens on."""
    node = config.origin if check_role(role) == "origin" else config.node(role)
    return node.host, node.port


def workers_for(config: Config, role: str) -> int:
    """How many uvicorn worker processes ``role`` runs."""
    node = config.origin if check_role(role) == "origin" else config.node(role)
    return node.workers


def create_node_app(config: Config, role: str, *, upstream: str | None = None) -> Any:
    """The ASGI app of ``role``; the app modules are imported only when needed."""
    check_role(role)
    if role == "origin":
        from .origin import create_app as create_origin

        return RequestGuard(create_origin(config), config.http_limits)
    from .cache import create_app as create_cache

    return RequestGuard(create_cache(config, role, upstream=upstream), config.http_limits)


def node_app(config: Config, role: str, *, upstream: str | None = None,
             config_path: str | None = None, dedicated: bool = False) -> Any:  # fmt: skip
    """The app of ``role`` as a server runs it: with ``/readyz``, signals and the access log.
    ``dedicated``: the process is this server alone (its garbage collector is settled once
    started: `gcsettle`).

    SIGHUP re-reads ``config_path`` (or the defaults, when None) plus the environment and hands
    the result to a cache app's ``reload``; the origin has nothing to reload.
    """
    app = create_node_app(config, role, upstream=upstream)
    reload = None
    if role != "origin":
        def reload() -> None:
            app.reload(load_config(config_path, env=config_env()))
    # (the origin's readiness is its database's; a cache node that cannot store still serves)
    probe = app.app.state.origin.readiness if role == "origin" else None
    wrapped: Any = Lifecycle(app, role=role, reload=reload, on_shutdown=workermetrics.mark_dead,
                             on_started=gcsettle.settle if dedicated else None, probe=probe)
    if config.log.access != "off":
        wrapped = AccessLog(wrapped, node=config.node_name(role), fmt=config.log.access,
                            sink=Sink(config.log.file or None))
    return wrapped


def app_from_env() -> Any:
    """uvicorn factory for multi-worker mode: the app named by the EDGEPROXY_* variables."""
    role = os.environ.get(ENV_ROLE, "")
    path = os.environ.get(ENV_CONFIG) or None
    upstream = os.environ.get(ENV_UPSTREAM) or None
    config = load_config(path, env=config_env())
    return node_app(config, role, upstream=upstream, config_path=path, dedicated=True)


class AnsweredFailures(logging.Filter):
    """Drops uvicorn's traceback of an answer cut short by a failure the app already logged.

    Past the status line, an upstream failure can only abort the connection, and the way an
    ASGI app asks for that is to raise; the cache's boundary logs it as one warning line
    first (`edgeproxy.cache.boundary`; the origin's store reads: `AnswerCut`), and a traceback
    for every truncated transfer would bury the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (isinstance(exc, HTTPError | AnswerCut) and record.getMessage().startswith(
            "Exception in ASGI application"))


def log_config(config: Config) -> dict[str, Any]:
    """`logging.config.dictConfig` settings: app and server lines with time and level on
    stderr. (Access lines do not go through `logging`: see `edgeproxy.accesslog.Sink`.)"""
    level = _LEVELS[config.log_level.lower()]
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": {"format": LOG_FORMAT, "datefmt": LOG_DATE_FORMAT}},
        "filters": {"answered": {"()": AnsweredFailures}},
        "handlers": {
            "default": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr",
                        "formatter": "default"},
        },
        "loggers": {
            "uvicorn": {"handlers": ["default"], "level": level, "propagate": False},
            "uvicorn.error": {"handlers": ["default"], "level": level, "propagate": False,
                              "filters": ["answered"]},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
        },
        "root": {"handlers": ["default"], "level": level},
    }


def _uvicorn_options(config: Config, role: str) -> dict[str, Any]:
    host, port = listen_address(config, role)
    section = config.role_section(role)
    # "auto" would pick these too, but naming them makes the choice visible in the code and
    # keeps the pure-Python fallbacks where the C extensions are missing (e.g. Windows).
    has_uvloop = importlib.util.find_spec("uvloop") is not None
    return {
        "host": host,
        "port": port,
        "log_level": config.log_level.lower(),
        # uvloop's, accepting every waiting connection per turn (`edgeproxy.accept`)
        "loop": "edgeproxy.accept:new_loop" if has_uvloop else "asyncio",
        **uvicorn_http_options(config.http_limits),  # httptools, or h11 without it
        # On SIGTERM: stop accepting, then give requests in flight this long to finish.
        "timeout_graceful_shutdown": section.shutdown_grace,
        "log_config": log_config(config),
        # Nodes talk to clients and upstreams directly; X-Forwarded-* rewriting and uvicorn's
        # Server header are per-request work that buys nothing here.
        "proxy_headers": False,
        "server_header": False,
        # A cache sends the Date of the response it stored (RFC 9110 §6.6.1) and dates its
        # own answers itself; uvicorn's would be a second Date field.
        "date_header": role == "origin",
        "access_log": False,  # ours (edgeproxy.accesslog) knows the cache verdict
        # A failed start stops the node ("auto" logged it as lifespan unsupported and served)
        "lifespan": "on",
        **server_options(section.tls),
    }


def raise_open_files_limit() -> int:
    """Raise this process's soft limit of open descriptors to its hard limit (workers
    inherit it), as nginx's ``worker_rlimit_nofile`` and Go's runtime do; the limit now.

    A connection costs one descriptor, and a large hit answered from its slice files holds
    one per slice until it is sent (`cache.lanebodies`): the common soft default of 1024
    would refuse connections long before the machine runs short."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # (Linux caps descriptors at fs.nr_open, 1 << 20 by default, even under no hard limit)
    want = 1 << 20 if hard == resource.RLIM_INFINITY else hard
    if soft == resource.RLIM_INFINITY or soft >= want:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    except (ValueError, OSError):  # (a sandbox may refuse it: keep the soft limit)
        return soft
    return want


def run_node(config: Config, role: str, *, upstream: str | None = None,
             config_path: str | None = None) -> None:  # fmt: skip
    """Serve ``role`` until SIGINT/SIGTERM.

    ``config_path`` is only needed for ``workers > 1``: each worker re-reads the config file
    (plus the same environment), so in that mode ``config`` must be what that file yields.
    """
    import uvicorn

    raise_open_files_limit()

    options = _uvicorn_options(config, role)
    workers = workers_for(config, role)
    if workers <= 1:
        single = uvicorn.Config(node_app(config, role, upstream=upstream,
                                         config_path=config_path, dedicated=True), **options)
        # a bound socket of our own: the loop accepts on it in batches (`edgeproxy.accept`)
        uvicorn.Server(single).run(sockets=[single.bind_socket()])
        return
    workermetrics.prepare(config.data_dir / role / "metrics")
    if config_path is not None:
        os.environ[ENV_CONFIG] = str(Path(config_path).resolve())
    else:
        os.environ.pop(ENV_CONFIG, None)
    os.environ[ENV_ROLE] = role
    if upstream:
        os.environ[ENV_UPSTREAM] = upstream
    else:
        os.environ.pop(ENV_UPSTREAM, None)
    _run_workers(uvicorn.Config("edgeproxy.server:app_from_env", factory=True,
                                workers=workers, **options))


def _run_workers(config: Any) -> None:
    """uvicorn's multi-worker supervisor, except that SIGHUP reloads the workers in place and
    each worker listens on a socket of its own (`workers.claim_port`)."""
    from uvicorn.config import STARTUP_FAILURE
    from uvicorn.supervisors import Multiprocess, multiprocess

    from .workers import OwnSocketWorker, claim_port

    class Supervisor(Multiprocess):
        def handle_hup(self) -> None:
            log.info("SIGHUP: asking %d workers to reload", len(self.processes))
            for process in self.processes:
                if process.pid is not None:
                    os.kill(process.pid, signal.SIGHUP)

    sock = claim_port(config.host, config.port)
    if sock is None:
        sock = config.bind_socket()  # no SO_REUSEPORT here: the workers share one socket
    else:
        log.info("listening on %s:%d, %d workers with a socket each", config.host,
                 sock.getsockname()[1], config.workers)
        # uvicorn makes its workers by this name (start and restarts alike)
        multiprocess.Process = OwnSocketWorker  # type: ignore[misc]
    supervisor = Supervisor(config, sockets=[sock])
    try:
        supervisor.run()
    finally:
        sock.close()
    if any(process.exitcode == STARTUP_FAILURE for process in supervisor.processes):
        sys.exit(STARTUP_FAILURE)  # (as one worker's failed start exits: not 0)


def exit_with_parent(parent_pid: int, interval: float = 0.5,
                     hard_after: float | None = None) -> threading.Thread:
    """SIGTERM this process once ``parent_pid`` is no longer its parent; ``hard_after``: and
    end it that many seconds later if it is still there.

    `edgeproxy up` stops its children itself, but if `up` is SIGKILLed it cannot; the node then
    notices it was re-parented and shuts down gracefully instead of living on as an orphan.
    A node's workers watch their supervisor the same way (uvicorn's do not: they lived on,
    each on a socket of its own), and a worker whose loop no longer turns, which a SIGTERM
    cannot stop, is ended after ``hard_after``.
    """

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(interval)
        os.kill(os.getpid(), signal.SIGTERM)
        if hard_after is not None:
            time.sleep(hard_after)
            os._exit(1)

    thread = threading.Thread(target=watch, name="edgeproxy-parent-watch", daemon=True)
    thread.start()
    return thread

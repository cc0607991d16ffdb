"""Run one edgeproxy node (origin, shield or edge) under uvicorn.

`run_node` serves the app of one role on the host/port from `Config`. With ``workers > 1``
uvicorn must import the app in each worker process, so it is given the import string of
`app_from_env`, a factory that rebuilds the app from ``EDGEPROXY_CONFIG`` and ``EDGEPROXY_ROLE``
(and ``EDGEPROXY_UPSTREAM``) which `run_node` sets before forking.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .config import Config, load_config
from .errors import ConfigError
from .guard import RequestGuard, uvicorn_http_options

ROLES = ("origin", "shield", "edge")

ENV_CONFIG = "EDGEPROXY_CONFIG"
ENV_ROLE = "EDGEPROXY_ROLE"
ENV_UPSTREAM = "EDGEPROXY_UPSTREAM"
# These share the EDGEPROXY_ prefix with config overrides (EDGEPROXY_EDGE__PORT) but are not
# settings: `load_config` would reject them as unknown keys, so they are hidden from it.
_RUNNER_ENV = frozenset({ENV_ROLE, ENV_UPSTREAM})

# uvicorn's own drain time on SIGTERM; kept below the stack's grace period so that a node
# with a stuck streaming client still exits on its own before it would be SIGKILLed.
GRACEFUL_SHUTDOWN_SECONDS = 5


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


def app_from_env() -> Any:
    """uvicorn factory for multi-worker mode: the app named by the EDGEPROXY_* variables."""
    role = os.environ.get(ENV_ROLE, "")
    path = os.environ.get(ENV_CONFIG) or None
    upstream = os.environ.get(ENV_UPSTREAM) or None
    config = load_config(path, env=config_env())
    return create_node_app(config, role, upstream=upstream)


def _uvicorn_options(config: Config, role: str) -> dict[str, Any]:
    host, port = listen_address(config, role)
    # "auto" would pick these too, but naming them makes the choice visible in the code and
    # keeps the pure-Python fallbacks where the C extensions are missing (e.g. Windows).
    has_uvloop = importlib.util.find_spec("uvloop") is not None
    return {
        "host": host,
        "port": port,
        "log_level": config.log_level.lower(),
        "loop": "uvloop" if has_uvloop else "asyncio",
        **uvicorn_http_options(config.http_limits),  # httptools, or h11 without it
        "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_SECONDS,
        # Nodes talk to clients and upstreams directly; X-Forwarded-* rewriting and uvicorn's
        # Server header are per-request work that buys nothing here.
        "proxy_headers": False,
        "server_header": False,
        # A cache sends the Date of the response it stored (RFC 9110 §6.6.1) and dates its
        # own answers itself; uvicorn's would be a second Date field.
        "date_header": role == "origin",
        "access_log": False,
    }


def run_node(config: Config, role: str, *, upstream: str | None = None,
             config_path: str | None = None) -> None:  # fmt: skip
    """Serve ``role`` until SIGINT/SIGTERM.

    ``config_path`` is only needed for ``workers > 1``: each worker re-reads the config file
    (plus the same environment), so in that mode ``config`` must be what that file yields.
    """
    import uvicorn

    options = _uvicorn_options(config, role)
    workers = workers_for(config, role)
    if workers <= 1:
        uvicorn.run(create_node_app(config, role, upstream=upstream), **options)
        return
    if config_path is not None:
        os.environ[ENV_CONFIG] = str(Path(config_path).resolve())
    else:
        os.environ.pop(ENV_CONFIG, None)
    os.environ[ENV_ROLE] = role
    if upstream:
        os.environ[ENV_UPSTREAM] = upstream
    else:
        os.environ.pop(ENV_UPSTREAM, None)
    uvicorn.run("edgeproxy.server:app_from_env", factory=True, workers=workers, **options)


def exit_with_parent(parent_pid: int, interval: float = 0.5) -> threading.Thread:
    """SIGTERM this process once ``parent_pid`` is no longer its parent.

    `edgeproxy up` stops its children itself, but if `up` is SIGKILLed it cannot; the node then
    notices it was re-parented and shuts down gracefully instead of living on as an orphan.
    """

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(interval)
        os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=watch, name="edgeproxy-parent-watch", daemon=True)
    thread.start()
    return thread

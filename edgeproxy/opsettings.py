"""The settings sections for running a node in production: listener TLS, upstream TLS, the
access log; and the checks of the files they name.

`edgeproxy.config` builds them like any other section; file paths are made absolute against
the config file's folder (`resolve_files`) and must exist and pair up (`check_files`), so a bad
one stops the node at start, naming its key.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = ["LogConfig", "TLSConfig", "UpstreamTLSConfig", "check_files", "resolve_files"]


@dataclass(frozen=True)
class TLSConfig:
    """A listener's certificate (HTTPS); ``client_ca`` also requires client certificates (mTLS).

    Paths are relative to the config file; empty means unset.
    """

    cert: str = ""
    key: str = ""
    client_ca: str = ""

    @property
    def enabled(self) -> bool:
        """Whether the listener serves HTTPS."""
        return bool(self.cert)


@dataclass(frozen=True)
class UpstreamTLSConfig:
    """How a cache node connects to an ``https://`` upstream: which CA to trust (default: the
    system's), and the client certificate to present where the upstream asks for one."""

    ca: str = ""
    cert: str = ""
    key: str = ""
    verify: bool = True


def _access_mode(value: Any) -> str:
    # YAML 1.1 reads a bare on/off as true/false: take them as meant.
    if isinstance(value, bool):
        return "on" if value else "off"
    if not isinstance(value, str) or value.lower() not in ("on", "off", "json"):
        raise ValueError(f"expected on, off or json, got {value!r}")
    return value.lower()


@dataclass(frozen=True)
class LogConfig:
    """The access log: ``on`` (text, like nginx's combined format), ``json`` or ``off``;
    written to standard output, or appended to ``file`` (relative to the config file)."""

    access: str = field(default="on", metadata={"parse": _access_mode})
    file: str = ""


_FILE_KEYS = frozenset({"cert", "key", "client_ca", "ca", "file"})
_TLS = (TLSConfig, UpstreamTLSConfig)


def _absolute(section: Any, base: Path) -> Any:
    changes = {f.name: str(base / getattr(section, f.name)) for f in dataclasses.fields(section)
               if f.name in _FILE_KEYS and getattr(section, f.name)}  # fmt: skip
    return dataclasses.replace(section, **changes)


def _tls_sections(node: Any) -> Iterable[tuple[str, TLSConfig | UpstreamTLSConfig]]:
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        if isinstance(value, _TLS):
            yield f.name, value


def resolve_files(config: Any, base: Path, roles: Iterable[str]) -> Any:
    """``config`` with the TLS and log file paths made absolute against ``base``."""
    sections: dict[str, Any] = {"log": _absolute(config.log, base)}
    for role in roles:
        node = config.role_section(role)
        changes = {name: _absolute(section, base) for name, section in _tls_sections(node)}
        sections[role] = dataclasses.replace(node, **changes)
    return config.replace(**sections)


def check_files(config: Any, roles: Iterable[str]) -> None:
    """TLS files must exist and pair up, and drains stay bounded; `ConfigError` names the key."""
    for role in roles:
        node = config.role_section(role)
        for name, section in _tls_sections(node):
            where = f"{role}.{name}"
            if bool(section.cert) != bool(section.key):
                raise ConfigError(f"{where}: cert and key go together (one is missing)")
            if isinstance(section, TLSConfig) and section.client_ca and not section.cert:
                raise ConfigError(f"{where}.client_ca: needs tls.cert and tls.key")
            for f in dataclasses.fields(section):
                value = getattr(section, f.name)
                if f.name in _FILE_KEYS and value and not Path(value).is_file():
                    raise ConfigError(f"{where}.{f.name}: no such file {value}")
        if node.shutdown_grace > 3600:
            raise ConfigError(f"{role}.shutdown_grace: at most 1h, got {node.shutdown_grace}")

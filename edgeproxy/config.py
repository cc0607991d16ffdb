"""Settings: one `Config` value object, loaded once from YAML with `EDGEPROXY_*` overrides.

Every key is checked at load time: an unknown key, a wrong type or an out-of-range value raises
`ConfigError` naming the dotted key (``edge.port``), so a bad file fails at start, not mid-request.
Durations accept ``300``, ``"5m"``, ``"7d"``; sizes accept ``1048576``, ``"1MiB"``, ``"50MB"``.
Environment variables override the file: ``EDGEPROXY_EDGE__PORT=9090`` sets ``edge.port``
(``__`` separates levels; the value is read as a YAML scalar).
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml

from .errors import ConfigError

ENV_PREFIX = "EDGEPROXY_"
TIERS = ("edge", "shield")

_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SIZE_UNITS = {
    "b": 1, "k": 1000, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
}


def parse_duration(value: Any) -> float:
    """Seconds from ``300``, ``"300s"``, ``"5m"``, ``"7d"``, ``"250ms"``."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 300, '5m' or '7d'")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*", str(value))
        if not m:
            raise ValueError(f"expected a duration such as 300, '5m' or '7d', got {value!r}")
        seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2) or "s"]
    if seconds < 0:
        raise ValueError("must not be negative")
    return seconds


def parse_size(value: Any) -> int:
    """Bytes from ``1048576``, ``"1MiB"``, ``"50MB"``, ``"2GiB"``."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 1048576, '1MiB' or '50MB'")
    if isinstance(value, int):
        size = value
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]+)?\s*", str(value))
        unit = (m.group(2) or "b").lower() if m else ""
        if not m or unit not in _SIZE_UNITS:
            raise ValueError(f"expected a size such as 1048576, '1MiB' or '50MB', got {value!r}")
        size = int(float(m.group(1)) * _SIZE_UNITS[unit])
    if size < 0:
        raise ValueError("must not be negative")
    return size


def _duration(default: float) -> Any:
    return field(default=default, metadata={"parse": parse_duration})


def _size(default: int) -> Any:
    return field(default=default, metadata={"parse": parse_size})


@dataclass(frozen=True)
class TierTTL:
    """How long a content class stays fresh at each cache tier (seconds)."""

    edge: float = field(default=0.0, metadata={"parse": parse_duration})
    shield: float = field(default=0.0, metadata={"parse": parse_duration})

    def for_tier(self, tier: str) -> float:
        """The TTL of ``tier`` (``edge`` or ``shield``)."""
        return float(getattr(self, tier))


@dataclass(frozen=True)
class ContentClass:
    """A named class of content, matched by path glob or content type, with per-tier TTLs."""

    name: str
    paths: tuple[str, ...] = ()
    content_types: tuple[str, ...] = ()
    ttl: TierTTL = field(default_factory=TierTTL)
    immutable: bool = False


DEFAULT_CONTENT_CLASSES = (
    # Order matters: the first class that matches wins, so thumbnails precede media.
    ContentClass("thumbnail", paths=("/v/t1/*/thumb",), ttl=TierTTL(7 * 86400, 30 * 86400),
                 immutable=True),
    ContentClass("media", paths=("/v/t1/*",), ttl=TierTTL(7 * 86400, 30 * 86400),
                 immutable=True),
    ContentClass("profile_photo", paths=("/pp/*",), ttl=TierTTL(86400, 7 * 86400)),
)


@dataclass(frozen=True)
class OriginConfig:
    """The bundled upload origin and object store."""

    host: str = "127.0.0.1"
    port: int = 8082
    public_url: str = ""  # base of signed upload URLs; defaults to http://host:port
    signing_key: str = "dev-only-upload-signing-key-change-me"
    upload_url_ttl: float = _duration(300)
    max_upload_size: int = _size(100 * 1024**2)
    max_thumbnail_size: int = _size(64 * 1024)
    workers: int = 1

    @property
    def base_url(self) -> str:
        """The URL clients use to reach this origin."""
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")


@dataclass(frozen=True)
class NodeConfig:
    """A caching node (edge or shield): where it listens and what it fronts."""

    host: str = "127.0.0.1"
    port: int = 8080
    upstream: str = ""
    cache_size: int = _size(1024**3)
    workers: int = 1

    @property
    def base_url(self) -> str:
        """The URL clients use to reach this node."""
        return f"http://{self.host}:{self.port}"


@dataclass(frozen=True)
class CacheConfig:
    """Caching behaviour shared by edge and shield."""

    slice_size: int = _size(1024**2)
    negative_ttl: float = _duration(10)
    upstream_timeout: float = _duration(10)
    fill_wait_timeout: float = _duration(30)
    read_chunk_size: int = _size(256 * 1024)
    stale_if_error: float = _duration(86400)  # grace to serve stale when upstream fails
    stale_while_revalidate: float = _duration(0)  # serve stale while one refresh runs
    upstream_backoff: float = _duration(2)  # after a connect failure, fail fast this long


@dataclass(frozen=True)
class Config:
    """Everything a node or a whole local stack needs, loaded once."""

    data_dir: Path = Path("./var")
    public_base_url: str = "http://127.0.0.1:8080"
    log_level: str = "info"
    admin_token: str = ""
    origin: OriginConfig = field(default_factory=OriginConfig)
    shield: NodeConfig = field(
        default_factory=lambda: NodeConfig(port=8081, upstream="http://127.0.0.1:8082",
                                           cache_size=2 * 1024**3))
    edge: NodeConfig = field(
        default_factory=lambda: NodeConfig(port=8080, upstream="http://127.0.0.1:8081"))
    cache: CacheConfig = field(default_factory=CacheConfig)
    content_classes: tuple[ContentClass, ...] = DEFAULT_CONTENT_CLASSES

    def node(self, tier: str) -> NodeConfig:
        """The `NodeConfig` of ``edge`` or ``shield``."""
        if tier not in TIERS:
            raise ConfigError(f"unknown tier {tier!r}; expected one of {', '.join(TIERS)}")
        node: NodeConfig = getattr(self, tier)
        return node

    def cache_dir(self, tier: str) -> Path:
        """Where ``tier`` keeps its disk cache."""
        return self.data_dir / tier / "cache"

    def replace(self, **changes: Any) -> Config:
        """A copy with top-level fields replaced."""
        return dataclasses.replace(self, **changes)


# --- loading -------------------------------------------------------------------------------


def load_config(path: str | os.PathLike[str] | None = None,
                env: Mapping[str, str] | None = None) -> Config:
    """Load `Config` from a YAML file (or defaults when ``path`` is None) plus environment."""
    data: dict[str, Any] = {}
    base = Path.cwd()
    if path is not None:
        p = Path(path)
        try:
            text = p.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read config file {p}: {exc.strerror}") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p} is not valid YAML: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of keys")
        data = loaded or {}
        base = p.resolve().parent
    _apply_env(data, os.environ if env is None else env)
    config: Config = _build(Config, data, "")
    if not config.data_dir.is_absolute():
        config = config.replace(data_dir=(base / config.data_dir).resolve())
    _check(config)
    return config


def _apply_env(data: dict[str, Any], env: Mapping[str, str]) -> None:
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX) or name == ENV_PREFIX + "CONFIG":
            continue
        keys = name[len(ENV_PREFIX) :].lower().split("__")
        if keys[0] not in _TOP_LEVEL_KEYS:
            continue  # EDGEPROXY_TOKEN and friends belong to the CLI, not to Config
        target = data
        for key in keys[:-1]:
            nxt = target.setdefault(key, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"{name}: {'.'.join(keys)} does not name a setting")
            target = nxt
        try:
            target[keys[-1]] = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            target[keys[-1]] = raw


_TOP_LEVEL_KEYS = frozenset(f.name for f in dataclasses.fields(Config))


def _build(cls: type[Any], data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {data!r}")
    hints = get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        key = f"{where}.{unknown[0]}" if where else str(unknown[0])
        raise ConfigError(f"unknown key {key!r} (known here: {', '.join(sorted(known))})")
    missing = [n for n, f in known.items() if n not in data and
               f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{where or 'config'}: missing required key {missing[0]!r}")
    kwargs = {}
    for name, value in data.items():
        key = f"{where}.{name}" if where else name
        f = known[name]
        parse: Callable[[Any], Any] | None = f.metadata.get("parse")
        try:
            kwargs[name] = parse(value) if parse else _convert(hints[name], value, key)
        except ValueError as exc:
            raise ConfigError(f"{key}: {exc}") from None
    return cls(**kwargs)


def _convert(tp: Any, value: Any, key: str) -> Any:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        return _convert(next(a for a in get_args(tp) if a is not type(None)), value, key)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)  # type: ignore[arg-type]
    if origin is tuple:
        return _convert_tuple(tp, value, key)
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise ValueError(f"expected a string, got {value!r}")
        return str(value)
    if tp is Path:
        if not isinstance(value, str):
            raise ValueError(f"expected a path, got {value!r}")
        return Path(value)
    raise ValueError(f"unsupported setting type {tp!r}")  # pragma: no cover


def _convert_tuple(tp: Any, value: Any, key: str) -> tuple[Any, ...]:
    (item_type, *_rest) = get_args(tp)
    if isinstance(value, str) and item_type is str:
        value = [value]
    if not isinstance(value, list):
        raise ValueError(f"expected a list, got {value!r}")
    return tuple(_convert(item_type, v, f"{key}[{i}]") for i, v in enumerate(value))


def _check(config: Config) -> None:
    """Cross-field rules the types alone cannot say."""
    ports = {"origin.port": config.origin.port, "shield.port": config.shield.port,
             "edge.port": config.edge.port}
    for key, port in ports.items():
        if not 0 <= port <= 65535:
            raise ConfigError(f"{key}: expected a port 0-65535, got {port}")
    for key, workers in (("origin.workers", config.origin.workers),
                         ("shield.workers", config.shield.workers),
                         ("edge.workers", config.edge.workers)):
        if workers < 1:
            raise ConfigError(f"{key}: must be at least 1, got {workers}")
    for tier in TIERS:
        upstream = config.node(tier).upstream
        if upstream and not re.match(r"https?://", upstream):
            raise ConfigError(f"{tier}.upstream: expected an http(s):// URL, got {upstream!r}")
    if not re.match(r"https?://", config.public_base_url):
        raise ConfigError(f"public_base_url: expected an http(s):// URL, "
                          f"got {config.public_base_url!r}")
    size = config.cache.slice_size
    if size <= 0 or size % (64 * 1024):
        raise ConfigError(f"cache.slice_size: must be a positive multiple of 64KiB, got {size}")
    if config.log_level.lower() not in ("critical", "error", "warning", "info", "debug", "trace"):
        raise ConfigError(f"log_level: expected one of critical, error, warning, info, debug, "
                          f"trace; got {config.log_level!r}")
    if len(config.origin.signing_key) < 16:
        raise ConfigError("origin.signing_key: must be at least 16 characters")
    names = [c.name for c in config.content_classes]
    for i, cc in enumerate(config.content_classes):
        if names.count(cc.name) > 1:
            raise ConfigError(f"content_classes[{i}].name: duplicate class {cc.name!r}")
        if not cc.name:
            raise ConfigError(f"content_classes[{i}].name: must not be empty")

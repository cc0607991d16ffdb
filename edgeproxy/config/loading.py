"""Loading `Config`: YAML, then `EDGEPROXY_*` overrides, every key converted and checked."""

from __future__ import annotations

import dataclasses
import os
import re
import types
from collections.abc import Callable, Mapping
from dataclasses import field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Union, get_args, get_origin, get_type_hints
from urllib.parse import urlsplit

import yaml

from ..errors import ConfigError
from ..opsettings import check_files, resolve_files
from ..secret_files import SECRET_FILE_SUFFIX, read_secret_files
from .sections import TIERS, Config

ENV_PREFIX = "EDGEPROXY_"
# EDGEPROXY_* variables that are not settings: the config file's path, the CLI's API token,
# what `edgeproxy serve` hands its uvicorn workers, and compose's secrets-file interpolation.
NON_SETTING_ENV = frozenset(ENV_PREFIX + name for name in (
    "CONFIG", "TOKEN", "ROLE", "UPSTREAM", "SECRETS_FILE"))  # fmt: skip


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
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{p} is not UTF-8 text (byte {exc.start}: "
                              f"{exc.object[exc.start:exc.start + 1]!r})") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p} is not valid YAML: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of keys")
        data = loaded or {}
        base = p.resolve().parent
    _apply_env(data, os.environ if env is None else env)
    read_secret_files(Config, data, "", base)
    config: Config = _build(Config, data, "")
    if not config.data_dir.is_absolute():
        config = config.replace(data_dir=(base / config.data_dir).resolve())
    config = resolve_files(config, base, ("origin", *TIERS))
    _check(config)
    check_files(config, ("origin", *TIERS))
    return config


def _apply_env(data: dict[str, Any], env: Mapping[str, str]) -> None:
    for name, raw in sorted(env.items()):
        if not name.startswith(ENV_PREFIX) or name in NON_SETTING_ENV:
            continue
        keys = name[len(ENV_PREFIX) :].lower().split("__")
        _check_env_keys(name, keys)
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


_NO_FIELD: Any = field(default=None)


def _check_env_keys(name: str, keys: list[str]) -> None:
    """`ConfigError` naming the variable if its path leaves the settings (a typo such as
    ``EDGEPROXY_EGDE__PORT`` would otherwise be silently ignored)."""
    cls: Any = Config
    for depth, key in enumerate(keys):
        if get_origin(cls) in (Mapping, dict, tuple):
            return  # inside a mapping or list: its keys are data, checked by _build
        if not dataclasses.is_dataclass(cls):
            raise ConfigError(f"{name}: {'.'.join(keys[:depth])} has no sub-settings")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        if key.endswith(SECRET_FILE_SUFFIX) and \
                fields.get(key.removesuffix(SECRET_FILE_SUFFIX), _NO_FIELD).metadata.get("secret"):
            return
        if key not in fields:
            where = ".".join(keys[:depth]) or "the top level"
            raise ConfigError(f"{name}: {key!r} is not a setting of {where} (known: "
                              f"{', '.join(sorted(fields))})")  # fmt: skip
        cls = get_type_hints(cls)[key]


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
    if origin in (Mapping, dict):
        return _convert_mapping(tp, value, key)
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


def _convert_mapping(tp: Any, value: Any, key: str) -> Mapping[str, Any]:
    key_type, value_type = get_args(tp)
    if not isinstance(value, dict):
        raise ValueError(f"expected a mapping, got {value!r}")
    return MappingProxyType({_convert(key_type, k, key): _convert(value_type, v, f"{key}.{k}")
                             for k, v in value.items()})  # fmt: skip


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
        if config.node(tier).upstream:
            check_url(f"{tier}.upstream", config.node(tier).upstream)
        for i, parent in enumerate(config.node(tier).upstreams):
            check_url(f"{tier}.upstreams[{i}].url", parent.url)
    check_url("public_base_url", config.public_base_url)
    if config.origin.public_url:
        check_url("origin.public_url", config.origin.public_url)
    _check_amounts(config)
    _check_places(config)
    if config.cache.scrub_interval < 0 or config.cache.scrub_rate < 1:
        raise ConfigError("cache.scrub_interval must be 0 (off) or more, cache.scrub_rate at "
                          "least 1 byte a second")
    size = config.cache.slice_size
    if size <= 0 or size % (64 * 1024):
        raise ConfigError(f"cache.slice_size: must be a positive multiple of 64KiB, got {size}")
    if config.log_level.lower() not in ("critical", "error", "warning", "info", "debug", "trace"):
        raise ConfigError(f"log_level: expected one of critical, error, warning, info, debug, "
                          f"trace; got {config.log_level!r}")
    if len(config.origin.signing_key) < 16:
        raise ConfigError("origin.signing_key: must be at least 16 characters")
    _check_auth_and_signing(config)
    for i, web_origin in enumerate(config.origin.cors_origins):
        # What a browser sends in its Origin header: scheme, host, port; no path, no slash.
        if web_origin != "*" and not re.fullmatch(r"https?://[^/\s]+", web_origin):
            raise ConfigError(f"origin.cors_origins[{i}]: expected '*' or scheme://host[:port] "
                              f"without a path, got {web_origin!r}")  # fmt: skip
    for name in ("max_header_bytes", "max_header_count", "max_target_length"):
        if getattr(config.http_limits, name) < 1:
            raise ConfigError(f"http_limits.{name}: must be at least 1")
    for name in ("header_timeout", "send_timeout"):
        if getattr(config.http_limits, name) <= 0:
            raise ConfigError(f"http_limits.{name}: must be positive")
    names = [c.name for c in config.content_classes]
    for i, cc in enumerate(config.content_classes):
        if names.count(cc.name) > 1:
            raise ConfigError(f"content_classes[{i}].name: duplicate class {cc.name!r}")
        if not cc.name:
            raise ConfigError(f"content_classes[{i}].name: must not be empty")


def _check_auth_and_signing(config: Config) -> None:
    auth = config.auth
    if not auth.jwt_secret and not auth.jwt_public_key:
        raise ConfigError("auth: set jwt_secret (HS256) or jwt_public_key (RS256), or both")
    if auth.jwt_secret and len(auth.jwt_secret.encode()) < 32:
        # RFC 7518 §3.2: an HS256 key shorter than the hash makes offline guessing cheap.
        raise ConfigError("auth.jwt_secret: must be at least 32 bytes")
    if auth.authorizer_url and not re.match(r"https?://", auth.authorizer_url):
        raise ConfigError(f"auth.authorizer_url: expected an http(s):// URL, "
                          f"got {auth.authorizer_url!r}")
    if auth.authorizer_timeout <= 0:
        raise ConfigError("auth.authorizer_timeout: must be positive")
    signing = config.download_signing
    if not signing.keys:
        raise ConfigError("download_signing.keys: at least one key id is needed")
    for kid, secret in signing.keys.items():
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,32}", kid):
            raise ConfigError(f"download_signing.keys: key id {kid!r} must match "
                              "[A-Za-z0-9_.-]{1,32}")  # fmt: skip
        if len(secret.encode()) < 16:
            raise ConfigError(f"download_signing.keys.{kid}: must be at least 16 characters")
    if signing.current not in signing.keys:
        raise ConfigError(f"download_signing.current: {signing.current!r} is not one of the "
                          f"keys ({', '.join(sorted(signing.keys))})")  # fmt: skip
    if signing.ttl <= 0:
        raise ConfigError("download_signing.ttl: must be positive")
    limits = config.limits
    for name in ("uploads_per_minute_per_user", "uploads_per_minute_per_conversation"):
        if getattr(limits, name) < 0:
            raise ConfigError(f"limits.{name}: must not be negative")


# RFC 9110 §5.6.2: a node's name goes into Via, X-Cache and the access log as a token.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Settings that must be above zero: a zero timeout or chunk refused or cut every answer.
_POSITIVE = (("cache", "upstream_timeout"), ("cache", "fill_wait_timeout"),
             ("cache", "read_chunk_size"), ("http_limits", "body_timeout"),
             ("origin", "database_timeout"), ("origin", "upload_url_ttl"),
             ("origin", "upload_expiry"), ("origin", "cleanup_interval"),
             ("origin", "replication_interval"), ("origin", "max_upload_size"))
_NOT_NEGATIVE = (("cache", "negative_ttl"), ("cache", "stale_if_error"),
                 ("cache", "stale_while_revalidate"), ("cache", "upstream_backoff"),
                 ("cache", "upstream_probe_interval"), ("cache", "memory_size"),
                 ("cache", "memory_max_object"), ("origin", "shutdown_grace"),
                 ("shield", "shutdown_grace"), ("edge", "shutdown_grace"))


def check_url(key: str, url: str) -> None:
    """``url`` is an http(s) URL with a host and a port that can be (ConfigError naming
    ``key`` otherwise): ``http://``, ``http://[::1`` or a port past 65535 passed, and the node
    answered 500 to everything (found from outside)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"{key}: {url!r} is not a URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or port == 0:
        raise ConfigError(f"{key}: expected an http(s)://host[:port] URL, got {url!r}")


def _check_amounts(config: Config) -> None:
    """Amounts a value of the right type may still get wrong, and the names nodes give."""
    for section, name in _POSITIVE:
        if not getattr(getattr(config, section), name) > 0:
            raise ConfigError(f"{section}.{name}: must be above zero, got "
                              f"{getattr(getattr(config, section), name)!r}")
    for section, name in _NOT_NEGATIVE:
        if getattr(getattr(config, section), name) < 0:
            raise ConfigError(f"{section}.{name}: must not be negative")
    for role in ("origin", *TIERS):
        name = config.role_section(role).node_name
        if name and not _TOKEN.fullmatch(name):
            raise ConfigError(f"{role}.node_name: letters, digits and !#$%&'*+-.^_`|~ only "
                              f"(it goes into Via and X-Cache), got {name!r}")


def _check_places(config: Config) -> None:
    """Where the origin keeps things: what `serve` would open, checked as far as can be
    without opening it (`check-config` passed them, and `serve` failed, one of them with a
    traceback; ``ftp://x/y`` became a local directory; found from outside)."""
    if config.data_dir.is_file():
        raise ConfigError(f"data_dir: {config.data_dir} is a file, not a directory")
    database = config.origin.database
    if "://" in database and not database.startswith(
            ("postgresql://", "postgres://", "postgresql+", "sqlite:")):
        raise ConfigError(f"origin.database: expected a postgresql:// URL or a SQLite file "
                          f"path, got {database!r}")
    if database and "://" not in database and Path(database).expanduser().is_dir():
        raise ConfigError(f"origin.database: {database} is a directory, not a SQLite file")
    stores = [("origin.store", config.origin.store)]
    stores += [(f"origin.replicas[{i}]", spec) for i, spec in enumerate(config.origin.replicas)]
    for key, spec in stores:
        if spec.startswith("s3://"):
            parts = urlsplit(spec)
            if not parts.netloc or parts.query or parts.fragment:
                raise ConfigError(f"{key}: {spec!r} is not an s3://bucket/prefix URL")
        elif "://" in spec:
            raise ConfigError(f"{key}: expected a directory or s3://bucket/prefix, "
                              f"got {spec!r}")
        elif spec and Path(spec).expanduser().is_file():
            raise ConfigError(f"{key}: {spec} is a file, not a directory")
    cold = config.storage.cold_dir
    if cold and Path(cold).expanduser().is_file():
        raise ConfigError(f"storage.cold_dir: {cold} is a file, not a directory")

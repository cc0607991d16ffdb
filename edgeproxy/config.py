"""Settings: one `Config` value object, loaded once from YAML with `EDGEPROXY_*` overrides.

Every key is checked at load time: an unknown key, a wrong type or an out-of-range value raises
`ConfigError` naming the dotted key (``edge.port``), so a bad file fails at start, not mid-request.
Durations accept ``300``, ``"5m"``, ``"7d"``; sizes accept ``1048576``, ``"1MiB"``, ``"50MB"``.
Environment variables override the file: ``EDGEPROXY_EDGE__PORT=9090`` sets ``edge.port``
(``__`` separates levels; the value is read as a YAML scalar); a variable whose section is no
setting (``EDGEPROXY_EGDE__PORT``) is refused, naming it. Every secret also has a ``*_file``
variant (``origin.signing_key_file``, ``download_signing.keys_file: {k1: path}``) whose file holds
the value, for Docker/Kubernetes secrets mounted as files; setting both is an error.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml

from .errors import ConfigError
from .opsettings import LogConfig, TLSConfig, UpstreamTLSConfig, check_files, resolve_files
from .secret_files import SECRET_FILE_SUFFIX, read_secret_files

ENV_PREFIX = "EDGEPROXY_"
# EDGEPROXY_* variables that are not settings: the config file's path, the CLI's API token,
# what `edgeproxy serve` hands its uvicorn workers, and compose's secrets-file interpolation.
NON_SETTING_ENV = frozenset(ENV_PREFIX + name for name in (
    "CONFIG", "TOKEN", "ROLE", "UPSTREAM", "SECRETS_FILE"))  # fmt: skip
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


@dataclass(frozen=True)
class FreeSpace:
    """Space to keep free on a volume: ``percent`` of its size and/or ``size`` bytes; with
    both, the smaller (a percentage suits small volumes, a fixed size large ones)."""

    percent: float | None = None
    size: int | None = None

    def of(self, total: int) -> int:
        """The bytes to keep free on a volume of ``total`` bytes."""
        terms = [int(total * self.percent / 100)] if self.percent is not None else []
        terms += [self.size] if self.size is not None else []
        return min(terms, default=0)

    def __str__(self) -> str:
        terms = [f"{self.percent:g}%"] if self.percent is not None else []
        terms += [str(self.size)] if self.size is not None else []
        return ", ".join(terms)


def parse_free_space(value: Any) -> FreeSpace:
    """A `FreeSpace` from ``"5%"``, ``"256MiB"``, ``268435456`` or ``"5%, 256MiB"``."""
    terms = value if isinstance(value, list) else \
        str(value).split(",") if isinstance(value, str) else [value]
    percent: float | None = None
    size: int | None = None
    for term in terms:
        text = str(term).strip()
        if text.endswith("%"):
            m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*%", text)
            if not m or percent is not None or float(m.group(1)) >= 100:
                raise ValueError(f"expected a percentage below 100% and/or a size, e.g. "
                                 f"'5%, 256MiB'; got {value!r}")
            percent = float(m.group(1))
        elif size is None:
            size = parse_size(term)
        else:
            raise ValueError(f"at most one percentage and one size, got {value!r}")
    if percent is None and size is None:
        raise ValueError(f"expected a percentage and/or a size, e.g. '5%, 256MiB'; got {value!r}")
    return FreeSpace(percent, size)


def _duration(default: float) -> Any:
    return field(default=default, metadata={"parse": parse_duration})


def _size(default: int) -> Any:
    return field(default=default, metadata={"parse": parse_size})


def _secret(default: str) -> Any:
    # Kept out of repr, hence logs; ``<name>_file`` may give the value instead.
    return field(default=default, repr=False, metadata={"secret": True})


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
    # Edges refuse (403) requests for this class without a valid signed-URL signature
    # (``exp``/``kid``/``sig``, see `edgeproxy.signing.DownloadSigner`).
    require_signature: bool = False


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
    signing_key: str = _secret("dev-only-upload-signing-key-change-me")
    upload_url_ttl: float = _duration(300)
    max_upload_size: int = _size(100 * 1024**2)
    max_thumbnail_size: int = _size(64 * 1024)
    workers: int = 1
    # Once its first bytes arrived, an upload stays resumable this long (tus Upload-Expires);
    # after that, or after upload_url_ttl with no byte received, it is cleaned up.
    upload_expiry: float = _duration(86400)
    cleanup_interval: float = _duration(300)  # how often expired uploads are swept
    # Web origins (``https://app.example``) whose pages may call the media API, tus and the
    # upload URLs (CORS); ``"*"`` allows any page. Empty: no CORS headers at all.
    cors_origins: tuple[str, ...] = ()
    tls: TLSConfig = field(default_factory=TLSConfig)
    node_name: str = ""  # in the access log; empty: the role name
    shutdown_grace: float = _duration(5)  # on SIGTERM, in-flight requests get this long
    # Where committed blobs live: "" (``<data_dir>/origin/blobs``), a directory, or
    # ``s3://bucket/prefix`` (settings in the ``s3`` section or the AWS_* environment).
    store: str = ""
    # The metadata database: "" (SQLite ``<data_dir>/origin/origin.sqlite3``), a SQLite file
    # path or ``sqlite:///…`` URL, or ``postgresql://user:pass@host:port/db``.
    database: str = ""
    # Further stores (other regions) every committed blob is copied to in the background.
    replicas: tuple[str, ...] = ()
    replication_interval: float = _duration(10)

    @property
    def base_url(self) -> str:
        """The URL clients use to reach this origin."""
        scheme = "https" if self.tls.enabled else "http"
        return (self.public_url or f"{scheme}://{self.host}:{self.port}").rstrip("/")


@dataclass(frozen=True)
class S3Config:
    """An S3-compatible object store; empty fields fall back to the standard AWS_* variables
    (AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)."""

    endpoint: str = ""  # e.g. http://minio:9000; "" = AWS (or AWS_ENDPOINT_URL)
    # The endpoint in presigned upload URLs, when clients reach the store by another name
    # than the origin does (http://minio:9000 inside, https://s3.example.com outside).
    public_endpoint: str = ""
    region: str = ""
    path_style: bool = False  # bucket in the path (MinIO, Ceph RGW), not in the host name
    access_key_id_file: str = ""  # secrets read from files (Kubernetes/compose secrets)
    secret_access_key_file: str = ""


@dataclass(frozen=True)
class StorageConfig:
    """Storage tiers by age (seed 000: hot 0-30 days, cold after)."""

    cold_after: float = _duration(30 * 86400)
    # Local store: the directory (another disk) blobs move to once cold; "" = no local tiers.
    cold_dir: str = ""
    # s3 store: the storage class the lifecycle rule moves cold blobs to.
    cold_storage_class: str = "STANDARD_IA"


@dataclass(frozen=True)
class UpstreamConfig:
    """One parent of a cache node, its rendezvous-hashing weight, and whether it is a backup
    (used only while every other upstream is down, like nginx's ``backup``)."""

    url: str
    weight: float = 1.0
    backup: bool = False


def parse_upstreams(value: Any) -> tuple[UpstreamConfig, ...]:
    """``[url, ...]`` or ``[{url, weight, backup}, ...]`` (or one URL) as `UpstreamConfig`s."""
    items = [value] if isinstance(value, str | dict) else value
    if not isinstance(items, list):
        raise ValueError(f"expected a list of URLs or of {{url, weight, backup}}, got {value!r}")
    out = []
    for i, item in enumerate(items):
        item = {"url": item} if isinstance(item, str) else item
        if (not isinstance(item, dict) or set(item) - {"url", "weight", "backup"}
                or "url" not in item):  # fmt: skip
            raise ValueError(f"[{i}]: expected a URL or {{url, weight, backup}}, got {item!r}")
        url, weight = item["url"], item.get("weight", 1.0)
        backup = item.get("backup", False)
        if not isinstance(backup, bool):
            raise ValueError(f"[{i}].backup: expected true or false, got {backup!r}")
        if not isinstance(url, str) or not re.match(r"https?://", url):
            raise ValueError(f"[{i}].url: expected an http(s):// URL, got {url!r}")
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not weight > 0:
            raise ValueError(f"[{i}].weight: expected a positive number, got {weight!r}")
        out.append(UpstreamConfig(url.rstrip("/"), float(weight), backup))
    if len({u.url for u in out}) != len(out):
        raise ValueError("the same URL is listed twice")
    if out and all(u.backup for u in out):
        raise ValueError("at least one upstream must not be a backup")
    return tuple(out)


@dataclass(frozen=True)
class NodeConfig:
    """A caching node (edge or shield): where it listens and what it fronts.

    ``upstreams``, when given, replaces ``upstream``: the node spreads keys over them by
    rendezvous hashing and fails over between them (`edgeproxy.cache.director`).
    """

    host: str = "127.0.0.1"
    port: int = 8080
    upstream: str = ""
    upstreams: tuple[UpstreamConfig, ...] = field(default=(),
                                                  metadata={"parse": parse_upstreams})
    cache_size: int = _size(1024**3)
    workers: int = 1
    tls: TLSConfig = field(default_factory=TLSConfig)
    upstream_tls: UpstreamTLSConfig = field(default_factory=UpstreamTLSConfig)
    node_name: str = ""  # in X-Cache, Via and the access log; empty: the tier name
    shutdown_grace: float = _duration(5)  # on SIGTERM, in-flight requests get this long

    @property
    def base_url(self) -> str:
        """The URL clients use to reach this node."""
        return f"{'https' if self.tls.enabled else 'http'}://{self.host}:{self.port}"

    @property
    def parents(self) -> tuple[UpstreamConfig, ...]:
        """The upstreams this node uses: ``upstreams``, else the one ``upstream``."""
        if self.upstreams:
            return self.upstreams
        return (UpstreamConfig(self.upstream.rstrip("/")),) if self.upstream else ()


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
    # With several upstreams: how often each parent's /healthz is probed (0: passive only).
    upstream_probe_interval: float = _duration(5)
    memory_size: int = _size(32 * 1024**2)  # per worker: small hot objects kept in memory
    memory_max_object: int = _size(256 * 1024)  # largest object the memory tier keeps
    # Background scrub: every stored slice hashed again this often (0: off; `edgeproxy scrub`
    # runs one on demand), reading at most scrub_rate bytes a second.
    scrub_interval: float = _duration(0)
    scrub_rate: int = _size(32 * 1024**2)
    # Kept free on the cache's volume, besides the cache_size bound: the least recently
    # stored slices are evicted before it is reached, and what cannot fit passes through.
    min_free: FreeSpace = field(default=FreeSpace(5.0, 256 * 1024**2),
                                metadata={"parse": parse_free_space})


DEV_JWT_SECRET = "dev-only-jwt-secret-change-me-0123456789"


@dataclass(frozen=True)
class AuthConfig:
    """Bearer JWTs for the media API: HS256 with a shared secret and/or RS256 with a public key.

    ``sub`` is the user. A token must carry ``exp``. ``audience``/``issuer`` are checked when set.
    """

    # HS256; empty disables HS256 (and `edgeproxy token`).
    jwt_secret: str = _secret(DEV_JWT_SECRET)
    jwt_public_key: str = ""  # RS256: PEM text or a path to a PEM file; empty disables RS256
    audience: str = ""
    issuer: str = ""
    leeway: float = _duration(30)  # clock skew allowed on exp/nbf/iat
    # Conversation access (seed 004, `edgeproxy.origin.authz`): an operator's service asked
    # {user, action, conversation_id, media_id} -> allow/deny, and/or a claim listing the
    # caller's conversations. Both empty: only the uploader gets a media's signed URL.
    authorizer_url: str = ""
    authorizer_timeout: float = _duration(2)
    authorizer_cache_ttl: float = _duration(30)  # how long a decision is remembered
    conversations_claim: str = ""


# Seed 004's `supported_types`.
DEFAULT_ALLOWED_TYPES = (
    "image/*", "audio/*", "video/*", "application/pdf", "application/msword",
    "application/vnd.openxmlformats-officedocument.*", "application/zip",
    "application/x-rar-compressed", "application/x-7z-compressed",
)  # fmt: skip
# Executables are refused even if an allowed pattern would match them (seed 004, §Security).
DEFAULT_BLOCKED_TYPES = (
    "application/x-msdownload", "application/x-msdos-program", "application/x-msi",
    "application/vnd.microsoft.portable-executable", "application/x-dosexec",
    "application/x-executable", "application/x-elf", "application/x-mach-binary",
    "application/x-sh", "application/x-shellscript", "text/x-shellscript", "application/x-csh",
    "application/x-bat", "application/x-msbatch", "application/java-archive",
    "application/vnd.android.package-archive", "application/x-apple-diskimage",
)  # fmt: skip
DEFAULT_BLOCKED_EXTENSIONS = (
    "exe", "dll", "com", "scr", "msi", "msp", "cpl", "bat", "cmd", "sh", "bash", "csh", "ps1",
    "psm1", "vbs", "vbe", "js", "jse", "wsf", "wsh", "hta", "jar", "apk", "app", "dmg",
)  # fmt: skip


@dataclass(frozen=True)
class LimitsConfig:
    """What the media API accepts, and how much (seed 004's defaults).

    Size limits are on the media: the encrypted blob may be larger by the format's fixed
    overhead (`crypto.enc_length`). A rate limit or the quota set to 0 is off.
    """

    allowed_types: tuple[str, ...] = DEFAULT_ALLOWED_TYPES  # MIME patterns (fnmatch)
    blocked_types: tuple[str, ...] = DEFAULT_BLOCKED_TYPES
    blocked_extensions: tuple[str, ...] = DEFAULT_BLOCKED_EXTENSIONS  # of a given file_name
    max_image_size: int = _size(50 * 1024**2)
    max_audio_size: int = _size(50 * 1024**2)
    max_video_size: int = _size(100 * 1024**2)
    max_document_size: int = _size(50 * 1024**2)
    max_archive_size: int = _size(50 * 1024**2)
    uploads_per_minute_per_user: int = 10
    uploads_per_minute_per_conversation: int = 50
    storage_quota_per_user: int = _size(10 * 1024**3)


@dataclass(frozen=True)
class DownloadSigningConfig:
    """Keys of signed download URLs: ``current`` signs, every key in ``keys`` verifies."""

    keys: Mapping[str, str] = field(
        default_factory=lambda: MappingProxyType(
            {"k1": "dev-only-download-signing-key-change-me"}),
        hash=False, repr=False, metadata={"secret": True})  # fmt: skip
    current: str = "k1"
    ttl: float = _duration(3600)  # seed 004: signed URLs live 1 hour


@dataclass(frozen=True)
class HTTPLimitsConfig:
    """Bounds on a request's head, the same on every role (see `edgeproxy.guard`)."""

    max_header_bytes: int = _size(16 * 1024)  # all fields, as on the wire: 431 beyond
    max_header_count: int = 100  # 431 beyond
    max_target_length: int = _size(8 * 1024)  # path and query: 414 beyond
    # A request head must arrive whole within this time of the connection opening or of the
    # previous answer ending (Apache's RequestReadTimeout header=20): 408 and close beyond,
    # so a slowloris client trickling its head cannot hold a connection forever.
    header_timeout: float = _duration(20)
    # An answer whose client takes no byte of it for this long is cut off (nginx's
    # send_timeout): a client that stops reading cannot hold a connection, its descriptors
    # and its buffered bytes forever.
    send_timeout: float = _duration(60)


@dataclass(frozen=True)
class Config:
    """Everything a node or a whole local stack needs, loaded once."""

    data_dir: Path = Path("./var")
    public_base_url: str = "http://127.0.0.1:8080"
    log_level: str = "info"
    log: LogConfig = field(default_factory=LogConfig)
    admin_token: str = _secret("")
    origin: OriginConfig = field(default_factory=OriginConfig)
    shield: NodeConfig = field(
        default_factory=lambda: NodeConfig(port=8081, upstream="http://127.0.0.1:8082",
                                           cache_size=2 * 1024**3))
    edge: NodeConfig = field(
        default_factory=lambda: NodeConfig(port=8080, upstream="http://127.0.0.1:8081"))
    cache: CacheConfig = field(default_factory=CacheConfig)
    content_classes: tuple[ContentClass, ...] = DEFAULT_CONTENT_CLASSES
    auth: AuthConfig = field(default_factory=AuthConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    download_signing: DownloadSigningConfig = field(default_factory=DownloadSigningConfig)
    http_limits: HTTPLimitsConfig = field(default_factory=HTTPLimitsConfig)
    s3: S3Config = field(default_factory=S3Config)
    storage: StorageConfig = field(default_factory=StorageConfig)

    def node(self, tier: str) -> NodeConfig:
        """The `NodeConfig` of ``edge`` or ``shield``."""
        if tier not in TIERS:
            raise ConfigError(f"unknown tier {tier!r}; expected one of {', '.join(TIERS)}")
        node: NodeConfig = getattr(self, tier)
        return node

    def role_section(self, role: str) -> OriginConfig | NodeConfig:
        """The section of ``origin``, ``shield`` or ``edge``."""
        return self.origin if role == "origin" else self.node(role)

    def node_name(self, role: str) -> str:
        """The name ``role``'s node goes by in logs and headers (its role unless set)."""
        return self.role_section(role).node_name or role

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
        upstream = config.node(tier).upstream
        if upstream and not re.match(r"https?://", upstream):
            raise ConfigError(f"{tier}.upstream: expected an http(s):// URL, got {upstream!r}")
    if not re.match(r"https?://", config.public_base_url):
        raise ConfigError(f"public_base_url: expected an http(s):// URL, "
                          f"got {config.public_base_url!r}")
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

"""The sections of `Config`, one frozen dataclass each, with their defaults; `loading` builds
and checks them."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ..errors import ConfigError
from ..opsettings import LogConfig, TLSConfig, UpstreamTLSConfig
from .units import FreeSpace, parse_duration, parse_free_space, parse_size

TIERS = ("edge", "shield")


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
    # A database call not answered within this long is a 503 database_unavailable (a server
    # that hangs or a partitioned host leaves queries on open connections waiting forever).
    database_timeout: float = _duration(10)

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
    # A request body whose client sends no byte of it for this long (nginx's
    # client_body_timeout): 408 and close, and the app sees the client gone (an upload keeps
    # what arrived and can resume), so a stalled body cannot hold a connection, nor an upload.
    body_timeout: float = _duration(60)


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

"""The origin's metadata in SQLite: uploads, committed media and profile photos.

Blob *bytes* live in the `BlobStore`; this database says which uploads exist, how far each has
got, and which blobs are committed media (only those are served at ``/v/t1/``). It is opened in
WAL mode with ``synchronous=FULL`` so a committed transaction survives a power cut and readers
never block the writer. Methods are synchronous and thread-safe (one connection behind a lock);
the app calls them through ``asyncio.to_thread`` so disk waits never stall the event loop.

Upload lifecycle (``uploads.state``)::

    pending ──PUT all bytes──► uploaded ──confirm ok──► committed
       │  ▲                       │
       └──┘ short body:           └──confirm finds a mismatch──► failed (staging removed)
            received < size, staging kept for resume

Columns that later issues need are here from the start so no migration is needed for them:
``owner`` (per-user quotas and rate limits: index on owner, created_at), ``protocol`` and
``received`` (resumable uploads: tus / ``X-Upload-Offset`` resume from ``received``),
``expires_at`` (cleanup of abandoned uploads: index on state, expires_at).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS uploads (
    media_id        TEXT PRIMARY KEY,
    owner           TEXT,              -- user id once uploads are authenticated
    protocol        TEXT NOT NULL DEFAULT 'signed-put',  -- later also 'tus'
    file_type       TEXT NOT NULL,     -- declared by the client; informational (blob is opaque)
    declared_size   INTEGER NOT NULL,
    declared_sha256 TEXT NOT NULL,     -- lowercase hex SHA-256 of the encrypted blob
    state           TEXT NOT NULL CHECK (state IN ('pending','uploaded','committed','failed')),
    received        INTEGER NOT NULL DEFAULT 0,  -- bytes durably in staging = resume offset
    received_sha256 TEXT,              -- hash of the staged bytes, known when streamed whole
    staging_name    TEXT,              -- file under <origin>/staging; NULL once gone
    expires_at      INTEGER NOT NULL,  -- the signed upload URL's expiry (unix seconds)
    created_at      REAL NOT NULL,
    updated_at      REAL NOT NULL,
    blob_sha256     TEXT,              -- set when committed
    thumb_sha256    TEXT,              -- thumbnail blob given with this upload's confirm
    failure         TEXT               -- error code of the confirm check that failed
);
CREATE INDEX IF NOT EXISTS uploads_by_state_expiry ON uploads (state, expires_at);
CREATE INDEX IF NOT EXISTS uploads_by_owner ON uploads (owner, created_at);

CREATE TABLE IF NOT EXISTS media (
    sha256       TEXT PRIMARY KEY,     -- committed blob, served at /v/t1/<sha256>
    size         INTEGER NOT NULL,
    thumb_sha256 TEXT,                 -- served at /v/t1/<sha256>/thumb; first one wins
    created_at   REAL NOT NULL
);

CREATE TABLE IF NOT EXISTS profile_photos (
    user         TEXT PRIMARY KEY,
    sha256       TEXT NOT NULL,
    content_type TEXT NOT NULL,
    size         INTEGER NOT NULL,
    updated_at   REAL NOT NULL
);
"""


class UploadState(StrEnum):
    """Where an upload is in its lifecycle (see the module docstring)."""

    PENDING = "pending"
    UPLOADED = "uploaded"
    COMMITTED = "committed"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Upload:
    """One row of ``uploads``."""

    media_id: str
    owner: str | None
    protocol: str
    file_type: str
    declared_size: int
    declared_sha256: str
    state: UploadState
    received: int
    received_sha256: str | None
    staging_name: str | None
    expires_at: int
    created_at: float
    updated_at: float
    blob_sha256: str | None
    thumb_sha256: str | None
    failure: str | None

    @property
    def complete(self) -> bool:
        """Whether every declared byte has been received."""
        return self.received == self.declared_size


@dataclass(frozen=True, slots=True)
class Media:
    """One committed media blob."""

    sha256: str
    size: int
    thumb_sha256: str | None
    created_at: float


@dataclass(frozen=True, slots=True)
class ProfilePhoto:
    """The current profile photo of one user."""

    user: str
    sha256: str
    content_type: str
    size: int
    updated_at: float


class Records:
    """The origin's SQLite database (one file, WAL mode)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        # One connection shared by worker threads, serialised by our own lock.
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        with self._lock:
            # First, so that worker processes opening the database together wait, not fail.
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise RuntimeError(f"{path} has schema version {version}, newer than this "
                                   f"edgeproxy understands ({SCHEMA_VERSION})")  # fmt: skip
            self._db.executescript(_SCHEMA)
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()

    def _one(self, sql: str, args: tuple[Any, ...]) -> sqlite3.Row | None:
        with self._lock:
            row: sqlite3.Row | None = self._db.execute(sql, args).fetchone()
            return row

    def _write(self, *statements: tuple[str, tuple[Any, ...]]) -> int:
        """Run ``statements`` in one transaction; the rowcount of the last one."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                count = 0
                for sql, args in statements:
                    count = self._db.execute(sql, args).rowcount
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            return count

    # --- uploads ---------------------------------------------------------------------------

    def create_upload(self, media_id: str, *, file_type: str, declared_size: int,
                      declared_sha256: str, expires_at: int, staging_name: str,
                      owner: str | None = None) -> Upload:  # fmt: skip
        """Record a new, empty upload."""
        now = time.time()
        self._write((
            "INSERT INTO uploads (media_id, owner, file_type, declared_size, declared_sha256,"
            " state, staging_name, expires_at, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, 'pending', ?, ?, ?, ?)",
            (media_id, owner, file_type, declared_size, declared_sha256, staging_name,
             expires_at, now, now),
        ))  # fmt: skip
        upload = self.get_upload(media_id)
        assert upload is not None
        return upload

    def get_upload(self, media_id: str) -> Upload | None:
        """The upload ``media_id``, or None."""
        row = self._one("SELECT * FROM uploads WHERE media_id = ?", (media_id,))
        if row is None:
            return None
        values = dict(row)
        values["state"] = UploadState(values["state"])
        return Upload(**values)

    def record_progress(self, media_id: str, received: int, received_sha256: str | None) -> None:
        """Note the bytes now durably staged; the upload is `UPLOADED` once all have come."""
        self._write((
            "UPDATE uploads SET received = ?, received_sha256 = ?, updated_at = ?,"
            " state = CASE WHEN ? = declared_size THEN 'uploaded' ELSE 'pending' END"
            " WHERE media_id = ? AND state IN ('pending', 'uploaded')",
            (received, received_sha256, time.time(), received, media_id),
        ))  # fmt: skip

    def mark_failed(self, media_id: str, failure: str) -> None:
        """The upload failed a confirm check; its staging file is gone."""
        self._write((
            "UPDATE uploads SET state = 'failed', failure = ?, staging_name = NULL,"
            " updated_at = ? WHERE media_id = ? AND state != 'committed'",
            (failure, time.time(), media_id),
        ))  # fmt: skip

    def commit_upload(self, media_id: str, blob_sha256: str, size: int,
                      thumb_sha256: str | None) -> Media:  # fmt: skip
        """Mark the upload committed and its blob served, in one transaction.

        If the blob is already media (the same bytes uploaded before), the existing row stands;
        a thumbnail is only added where there was none, because ``/thumb`` URLs are cached as
        immutable and must never change what they serve.
        """
        now = time.time()
        self._write(
            ("INSERT INTO media (sha256, size, thumb_sha256, created_at) VALUES (?, ?, ?, ?)"
             " ON CONFLICT (sha256) DO UPDATE SET"
             " thumb_sha256 = COALESCE(media.thumb_sha256, excluded.thumb_sha256)",
             (blob_sha256, size, thumb_sha256, now)),
            ("UPDATE uploads SET state = 'committed', blob_sha256 = ?, thumb_sha256 = ?,"
             " staging_name = NULL, updated_at = ? WHERE media_id = ?",
             (blob_sha256, thumb_sha256, now, media_id)),
        )  # fmt: skip
        media = self.get_media(blob_sha256)
        assert media is not None
        return media

    # --- media and profile photos ------------------------------------------------------------

    def get_media(self, sha256: str) -> Media | None:
        """The committed media blob ``sha256``, or None."""
        row = self._one("SELECT * FROM media WHERE sha256 = ?", (sha256,))
        return Media(**dict(row)) if row is not None else None

    def set_profile_photo(self, user: str, sha256: str, content_type: str, size: int) -> None:
        """Point ``user``'s profile photo at blob ``sha256``."""
        self._write((
            "INSERT INTO profile_photos (user, sha256, content_type, size, updated_at)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (user) DO UPDATE SET sha256 = excluded.sha256,"
            " content_type = excluded.content_type, size = excluded.size,"
            " updated_at = excluded.updated_at",
            (user, sha256, content_type, size, time.time()),
        ))  # fmt: skip

    def get_profile_photo(self, user: str) -> ProfilePhoto | None:
        """``user``'s current profile photo, or None."""
        row = self._one("SELECT * FROM profile_photos WHERE user = ?", (user,))
        return ProfilePhoto(**dict(row)) if row is not None else None

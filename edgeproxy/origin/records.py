"""The origin's metadata in SQLite: uploads, committed media and profile photos.

Blob *bytes* live in the `BlobStore`; this database says which uploads exist, how far each has
got, and which blobs are committed media (only those are served at ``/v/t1/``). It is opened in
WAL mode with ``synchronous=FULL`` so a committed transaction survives a power cut and readers
never block the writer. Methods are synchronous and thread-safe (one connection behind a lock);
the app calls them through ``asyncio.to_thread`` so disk waits never stall the event loop.

Upload lifecycle (``uploads.state``)::

    pending ──PUT/PATCH all bytes──► uploaded ──confirm ok──► committed
       │  ▲                             │
       └──┘ short or cut-off body:      └──confirm finds a mismatch──► failed (staging removed)
            received < size, staging kept; resumed with X-Upload-Offset / tus PATCH
    pending/uploaded ──expired (resume_until passed) or terminated (tus DELETE)──► failed

``owner`` is the JWT ``sub`` of the uploader (NULL for uploads made before authentication);
``conversation_id`` (optional) scopes the per-conversation rate limit; ``resume_until`` is when
an unfinished upload expires (tus ``Upload-Expires``). Schema 2 added the last two columns.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from .limits import RATE_WINDOW, QuotaExceeded, RateLimited, UploadAllowance

SCHEMA_VERSION = 2
LIVE_STATES = ("pending", "uploaded", "committed")  # uploads that count against a quota

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
    failure         TEXT,              -- error code of the check that failed, or
                                       -- 'expired' / 'terminated'
    conversation_id TEXT,              -- optional; per-conversation rate limit (schema 2)
    resume_until    INTEGER            -- unfinished upload expires then (schema 2)
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

# Run after _SCHEMA, whose CREATE TABLE IF NOT EXISTS leaves an older table as it was.
_MIGRATE_TO_2 = """
ALTER TABLE uploads ADD COLUMN conversation_id TEXT;
ALTER TABLE uploads ADD COLUMN resume_until INTEGER;
"""
_INDEXES_2 = """
CREATE INDEX IF NOT EXISTS uploads_by_conversation ON uploads (conversation_id, created_at);
CREATE INDEX IF NOT EXISTS uploads_by_state_resume ON uploads (state, resume_until);
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
    conversation_id: str | None = None
    resume_until: int | None = None

    @property
    def complete(self) -> bool:
        """Whether every declared byte has been received."""
        return self.received == self.declared_size

    @property
    def expires(self) -> int:
        """When this upload, unfinished, stops being resumable (tus Upload-Expires)."""
        return self.resume_until if self.resume_until is not None else self.expires_at

    def is_expired(self, now: float) -> bool:
        """Unfinished and past `expires`, or its URL expired before any byte arrived
        (the same rule as `Records.expired_uploads`)."""
        if self.state not in (UploadState.PENDING, UploadState.UPLOADED):
            return False
        return self.expires < now or (self.received == 0 and self.expires_at < now)


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
            columns = {r[1] for r in self._db.execute("PRAGMA table_info(uploads)")}
            if "resume_until" not in columns:  # a schema-1 database
                self._db.executescript(_MIGRATE_TO_2)
            self._db.executescript(_INDEXES_2)
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()

    def _one(self, sql: str, args: tuple[Any, ...]) -> sqlite3.Row | None:
        with self._lock:
            row: sqlite3.Row | None = self._db.execute(sql, args).fetchone()
            return row

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; IMMEDIATE takes the write lock first, so what it reads
        cannot change under it (another process waits for it, up to busy_timeout)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

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
                      owner: str | None = None, protocol: str = "signed-put",
                      conversation_id: str | None = None, resume_until: int | None = None,
                      allowance: UploadAllowance | None = None,
                      now: float | None = None) -> Upload:  # fmt: skip
        """Record a new, empty upload, if ``allowance`` allows it.

        The rate limits and the quota are checked and the row inserted in one IMMEDIATE
        transaction, so concurrent requests (threads or processes) cannot all slip under a
        limit together. Raises `RateLimited` or `QuotaExceeded`; nothing is recorded then.
        """
        now = time.time() if now is None else now
        with self._transaction() as db:
            if allowance is not None and owner is not None:
                self._check_allowance(db, allowance, owner, conversation_id, declared_size, now)
            db.execute(
                "INSERT INTO uploads (media_id, owner, protocol, file_type, declared_size,"
                " declared_sha256, state, staging_name, expires_at, created_at, updated_at,"
                " conversation_id, resume_until)"
                " VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?, ?, ?, ?)",
                (media_id, owner, protocol, file_type, declared_size, declared_sha256,
                 staging_name, expires_at, now, now, conversation_id, resume_until),
            )  # fmt: skip
        upload = self.get_upload(media_id)
        assert upload is not None
        return upload

    @staticmethod
    def _check_allowance(db: sqlite3.Connection, allowance: UploadAllowance, owner: str,
                         conversation_id: str | None, size: int, now: float) -> None:  # fmt: skip
        since = now - RATE_WINDOW
        scopes = [("user", "owner", owner, allowance.per_user_per_minute)]
        if conversation_id is not None:
            scopes.append(("conversation", "conversation_id", conversation_id,
                           allowance.per_conversation_per_minute))  # fmt: skip
        for scope, column, value, limit in scopes:
            if limit <= 0:
                continue
            # The created_at of the upload whose leaving the window makes room for one more.
            row = db.execute(
                f"SELECT created_at FROM uploads WHERE {column} = ? AND created_at > ?"
                " ORDER BY created_at DESC LIMIT 1 OFFSET ?", (value, since, limit - 1),
            ).fetchone()  # fmt: skip
            if row is not None:
                retry = max(1, int(row[0] + RATE_WINDOW - now + 0.999))
                raise RateLimited(scope, limit, retry)
        if allowance.quota > 0:
            used = db.execute(
                "SELECT COALESCE(SUM(declared_size), 0) FROM uploads WHERE owner = ? AND state"
                f" IN {LIVE_STATES}", (owner,),
            ).fetchone()[0]  # fmt: skip
            if used + size > allowance.quota:
                raise QuotaExceeded(allowance.quota, used, size)

    def get_upload(self, media_id: str) -> Upload | None:
        """The upload ``media_id``, or None."""
        row = self._one("SELECT * FROM uploads WHERE media_id = ?", (media_id,))
        return None if row is None else self._upload(row)

    @staticmethod
    def _upload(row: sqlite3.Row) -> Upload:
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
        """The upload failed a check, expired or was terminated; its staging file is gone."""
        self._write((
            "UPDATE uploads SET state = 'failed', failure = ?, staging_name = NULL,"
            " updated_at = ? WHERE media_id = ? AND state != 'committed'",
            (failure, time.time(), media_id),
        ))  # fmt: skip

    def expired_uploads(self, now: float, limit: int = 500) -> list[Upload]:
        """Unfinished uploads past their ``resume_until``, or whose URL expired unused."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM uploads WHERE state IN ('pending', 'uploaded') AND"
                " (COALESCE(resume_until, expires_at) < ? OR (received = 0 AND expires_at < ?))"
                " LIMIT ?", (now, now, limit),
            ).fetchall()  # fmt: skip
        return [self._upload(row) for row in rows]

    def live_staging_names(self) -> set[str]:
        """Staging files that unfinished uploads still own."""
        with self._lock:
            rows = self._db.execute(
                "SELECT staging_name FROM uploads WHERE state IN ('pending', 'uploaded')"
                " AND staging_name IS NOT NULL").fetchall()  # fmt: skip
        return {row[0] for row in rows}

    def stats(self) -> dict[str, int]:
        """Totals for /metrics, read from the database so every worker reports the same."""
        with self._lock:
            media_bytes, media_count = self._db.execute(
                "SELECT COALESCE(SUM(size), 0), COUNT(*) FROM media").fetchone()  # fmt: skip
            committed_bytes = self._db.execute(
                "SELECT COALESCE(SUM(declared_size), 0) FROM uploads WHERE state = 'committed'"
            ).fetchone()[0]  # fmt: skip
            unfinished = self._db.execute(
                "SELECT COUNT(*) FROM uploads WHERE state IN ('pending', 'uploaded')"
            ).fetchone()[0]  # fmt: skip
        # Every committed upload references one media blob; each is stored once, so the bytes
        # of all committed uploads minus the bytes stored is what store-once saved.
        return {"media_bytes": media_bytes, "media_count": media_count,
                "dedup_bytes_saved": committed_bytes - media_bytes,
                "unfinished_uploads": unfinished}  # fmt: skip

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

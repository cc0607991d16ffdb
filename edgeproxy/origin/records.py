"""The origin's metadata: uploads, committed media and profile photos.

Blob *bytes* live in the `BlobStore`; this database says which uploads exist, how far each has
got, and which blobs are committed media (only those are served at ``/v/t1/``). It is SQLite by
default and PostgreSQL when ``origin.database`` is a ``postgresql://`` URL: one schema and one
code path (`edgeproxy.origin.db`). Methods are synchronous and thread-safe (a connection pool);
the app calls them through ``asyncio.to_thread`` so database waits never stall the event loop.

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

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection, case, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite

from .db import Database, media, profile_photos, uploads
from .limits import RATE_WINDOW, QuotaExceeded, RateLimited, UploadAllowance

LIVE_STATES = ("pending", "uploaded", "committed")  # uploads that count against a quota
UNFINISHED = ("pending", "uploaded")
# What a media id can look like ("m_" and secrets.token_urlsafe: ASCII letters, digits, - _).
MEDIA_ID = re.compile(r"m_[A-Za-z0-9_-]{1,64}")


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


def _upload(row: Mapping[Any, Any]) -> Upload:
    values = dict(row)
    values["state"] = UploadState(values["state"])
    return Upload(**values)


class Records:
    """The origin's metadata database (see `edgeproxy.origin.db` for the engines)."""

    def __init__(self, url: str) -> None:
        self.db = Database(url)

    def close(self) -> None:
        """Close the connection pool."""
        self.db.close()

    def ping(self) -> None:
        """Read the uploads table once (raises if the database cannot be reached or read):
        ``SELECT 1`` alone would not open SQLite's file."""
        with self.db.read() as conn:
            conn.execute(select(uploads.c.media_id).limit(1)).first()

    def _upsert(self, table: Any) -> Any:
        # ON CONFLICT has the same API in both dialects, but each builds its own statement.
        return (postgresql if self.db.dialect == "postgresql" else sqlite).insert(table)

    # --- uploads ---------------------------------------------------------------------------

    def create_upload(self, media_id: str, *, file_type: str, declared_size: int,
                      declared_sha256: str, expires_at: int, staging_name: str,
                      owner: str | None = None, protocol: str = "signed-put",
                      conversation_id: str | None = None, resume_until: int | None = None,
                      allowance: UploadAllowance | None = None,
                      now: float | None = None) -> Upload:  # fmt: skip
        """Record a new, empty upload, if ``allowance`` allows it.

        The rate limits and the quota are checked and the row inserted in one transaction
        that holds the owner's and the conversation's locks, so concurrent requests (threads,
        processes, or origins on other machines sharing PostgreSQL) cannot all slip under a
        limit together. Raises `RateLimited` or `QuotaExceeded`; nothing is recorded then.
        """
        now = time.time() if now is None else now
        locks = [f"user:{owner}"] + ([f"conversation:{conversation_id}"]
                                     if conversation_id is not None else [])  # fmt: skip
        with self.db.write(*locks) as conn:
            if allowance is not None and owner is not None:
                self._check_allowance(conn, allowance, owner, conversation_id, declared_size,
                                      now)  # fmt: skip
            conn.execute(insert(uploads).values(
                media_id=media_id, owner=owner, protocol=protocol, file_type=file_type,
                declared_size=declared_size, declared_sha256=declared_sha256, state="pending",
                received=0, staging_name=staging_name, expires_at=expires_at, created_at=now,
                updated_at=now, conversation_id=conversation_id, resume_until=resume_until))
        upload = self.get_upload(media_id)
        assert upload is not None
        return upload

    @staticmethod
    def _check_allowance(conn: Connection, allowance: UploadAllowance, owner: str,
                         conversation_id: str | None, size: int, now: float) -> None:  # fmt: skip
        since = now - RATE_WINDOW
        scopes = [("user", uploads.c.owner, owner, allowance.per_user_per_minute)]
        if conversation_id is not None:
            scopes.append(("conversation", uploads.c.conversation_id, conversation_id,
                           allowance.per_conversation_per_minute))  # fmt: skip
        for scope, column, value, limit in scopes:
            if limit <= 0:
                continue
            # The created_at of the upload whose leaving the window makes room for one more.
            oldest = conn.execute(
                select(uploads.c.created_at).where(column == value, uploads.c.created_at > since)
                .order_by(uploads.c.created_at.desc()).limit(1).offset(limit - 1)
            ).scalar()  # fmt: skip
            if oldest is not None:
                retry = max(1, int(oldest + RATE_WINDOW - now + 0.999))
                raise RateLimited(scope, limit, retry)
        if allowance.quota > 0:
            used = int(conn.execute(
                select(func.coalesce(func.sum(uploads.c.declared_size), 0))
                .where(uploads.c.owner == owner, uploads.c.state.in_(LIVE_STATES))
            ).scalar_one())  # fmt: skip
            if used + size > allowance.quota:
                raise QuotaExceeded(allowance.quota, used, size)

    def get_upload(self, media_id: str) -> Upload | None:
        """The upload ``media_id``, or None (also for a string no media id has the shape of:
        PostgreSQL refused a NUL or a lone surrogate in a client's id with an error, a 500)."""
        if not MEDIA_ID.fullmatch(media_id):
            return None
        with self.db.read() as conn:
            row = conn.execute(select(uploads).where(uploads.c.media_id == media_id)).first()
        return None if row is None else _upload(row._mapping)

    def record_progress(self, media_id: str, received: int, received_sha256: str | None) -> None:
        """Note the bytes now durably staged; the upload is `UPLOADED` once all have come."""
        with self.db.write() as conn:
            conn.execute(update(uploads).where(
                uploads.c.media_id == media_id, uploads.c.state.in_(UNFINISHED),
            ).values(received=received, received_sha256=received_sha256, updated_at=time.time(),
                     state=case((uploads.c.declared_size == received, "uploaded"),
                                else_="pending")))  # fmt: skip

    def mark_failed(self, media_id: str, failure: str) -> bool:
        """The upload failed a check, expired or was terminated; its staging file is gone.

        False, and nothing changed, if it was no longer unfinished: a request in another
        worker committed or ended it first. The database decides which of two racing ends
        wins, so a DELETE answered 204 never leaves committed media behind.
        """
        with self.db.write() as conn:
            done = conn.execute(update(uploads).where(
                uploads.c.media_id == media_id, uploads.c.state.in_(UNFINISHED),
            ).values(state="failed", failure=failure, staging_name=None,
                     updated_at=time.time()))  # fmt: skip
        return bool(done.rowcount)

    def expired_uploads(self, now: float, limit: int = 500) -> list[Upload]:
        """Unfinished uploads past their ``resume_until``, or whose URL expired unused."""
        c = uploads.c
        query = select(uploads).where(
            c.state.in_(UNFINISHED),
            (func.coalesce(c.resume_until, c.expires_at) < now)
            | ((c.received == 0) & (c.expires_at < now)),
        ).limit(limit)  # fmt: skip
        with self.db.read() as conn:
            return [_upload(row._mapping) for row in conn.execute(query)]

    def live_staging_names(self) -> set[str]:
        """Staging files that unfinished uploads still own."""
        query = select(uploads.c.staging_name).where(
            uploads.c.state.in_(UNFINISHED), uploads.c.staging_name.is_not(None))
        with self.db.read() as conn:
            return {row[0] for row in conn.execute(query)}

    def stats(self, cold_before: float | None = None) -> dict[str, int]:
        """Totals for /metrics, read from the database so every worker reports the same;
        ``cold_bytes`` are those of media committed before ``cold_before``."""
        c = uploads.c
        with self.db.read() as conn:
            cold_bytes = 0 if cold_before is None else conn.execute(
                select(func.coalesce(func.sum(media.c.size), 0))
                .where(media.c.created_at < cold_before)).scalar_one()  # fmt: skip
            media_bytes, media_count = conn.execute(
                select(func.coalesce(func.sum(media.c.size), 0), func.count())
                .select_from(media)).one()  # fmt: skip
            committed_bytes = conn.execute(
                select(func.coalesce(func.sum(c.declared_size), 0))
                .where(c.state == "committed")).scalar_one()  # fmt: skip
            unfinished = conn.execute(
                select(func.count()).select_from(uploads)
                .where(c.state.in_(UNFINISHED))).scalar_one()  # fmt: skip
        # Every committed upload references one media blob; each is stored once, so the bytes
        # of all committed uploads minus the bytes stored is what store-once saved.
        return {"media_bytes": int(media_bytes), "media_count": int(media_count),
                "dedup_bytes_saved": int(committed_bytes) - int(media_bytes),
                "unfinished_uploads": int(unfinished), "cold_bytes": int(cold_bytes)}  # fmt: skip

    def commit_upload(self, media_id: str, blob_sha256: str, size: int,
                      thumb_sha256: str | None, now: float | None = None,
                      ) -> Media | None:  # fmt: skip
        """Mark the upload committed and its blob served, in one transaction.

        If the blob is already media (the same bytes uploaded before), the existing row stands;
        a thumbnail is only added where there was none, because ``/thumb`` URLs are cached as
        immutable and must never change what they serve. None, and nothing changed, if the
        upload was no longer unfinished (terminated, expired or committed meanwhile by a
        request in another worker): its blob is then not served on its account.
        """
        now = time.time() if now is None else now
        add = self._upsert(media).values(sha256=blob_sha256, size=size,
                                         thumb_sha256=thumb_sha256, created_at=now)  # fmt: skip
        add = add.on_conflict_do_update(index_elements=[media.c.sha256], set_={
            "thumb_sha256": func.coalesce(media.c.thumb_sha256, add.excluded.thumb_sha256)})
        with self.db.write() as conn:
            done = conn.execute(update(uploads).where(
                uploads.c.media_id == media_id, uploads.c.state.in_(UNFINISHED),
            ).values(state="committed", blob_sha256=blob_sha256, thumb_sha256=thumb_sha256,
                     staging_name=None, updated_at=now))  # fmt: skip
            if not done.rowcount:
                return None
            conn.execute(add)
        committed = self.get_media(blob_sha256)
        assert committed is not None
        return committed

    # --- media and profile photos ------------------------------------------------------------

    def media_between(self, start: float, end: float) -> list[Media]:
        """Media committed in ``[start, end)`` (the storage-tier sweeper's next batch)."""
        query = select(media).where(media.c.created_at >= start, media.c.created_at < end)
        with self.db.read() as conn:
            return [Media(**row._mapping) for row in conn.execute(query)]

    def get_media(self, sha256: str) -> Media | None:
        """The committed media blob ``sha256``, or None."""
        with self.db.read() as conn:
            row = conn.execute(select(media).where(media.c.sha256 == sha256)).first()
        return Media(**row._mapping) if row is not None else None

    def set_profile_photo(self, user: str, sha256: str, content_type: str, size: int) -> None:
        """Point ``user``'s profile photo at blob ``sha256``."""
        put = self._upsert(profile_photos).values(user=user, sha256=sha256,
                                                  content_type=content_type, size=size,
                                                  updated_at=time.time())  # fmt: skip
        put = put.on_conflict_do_update(index_elements=[profile_photos.c.user], set_={
            name: put.excluded[name] for name in ("sha256", "content_type", "size",
                                                  "updated_at")})  # fmt: skip
        with self.db.write() as conn:
            conn.execute(put)

    def get_profile_photo(self, user: str) -> ProfilePhoto | None:
        """``user``'s current profile photo, or None."""
        with self.db.read() as conn:
            row = conn.execute(select(profile_photos)
                               .where(profile_photos.c.user == user)).first()  # fmt: skip
        return ProfilePhoto(**row._mapping) if row is not None else None

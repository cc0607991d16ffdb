"""Cross-region replication (seed 000's pipeline: validate → index → replicate).

``origin.replicas`` lists further stores (``s3://bucket/prefix`` in other regions, or
directories). A built-in copier copies every committed media blob and its thumbnail (and, in
a bucket, the ``thumbs/`` alias a shield reads) to each,
oldest first, and notes each copy in the ``replication`` table, so a restart resumes where it
stopped and several origins sharing a database share the work's results (two copying the
same blob is harmless: stores keep a blob once). Between two S3 buckets of one endpoint the
copy is server-side (``CopyObject``); otherwise the bytes stream through a staging file.

``edgeproxy_replication_lag_seconds`` is the age of the oldest committed blob not yet on
every replica (0 when all are); the ``EdgeproxyReplicationLagHigh`` alert fires past 30
minutes. Bucket-native replication (S3 CRR) can replace the copier: leave ``replicas`` empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import and_, func, insert, select

from .blobstore import BlobStore
from .db import media, replication
from .records import Records
from .s3store import S3BlobStore
from .staging import Staging

log = logging.getLogger("edgeproxy.origin")
BATCH = 100


@dataclass(frozen=True)
class Replica:
    """One replica store and the name its copies are recorded under."""

    name: str
    store: BlobStore


def pending(records: Records, target: str,
            limit: int = BATCH) -> list[tuple[str, str | None]]:  # fmt: skip
    """``(media sha256, thumbnail sha256)`` of media not yet on ``target``, oldest first."""
    done = replication.alias()
    query = (select(media.c.sha256, media.c.thumb_sha256)
             .outerjoin(done, and_(done.c.sha256 == media.c.sha256, done.c.target == target))
             .where(done.c.sha256.is_(None)).order_by(media.c.created_at).limit(limit))
    with records.db.read() as conn:
        return [(sha, thumb) for sha, thumb in conn.execute(query).all()]


def mark_done(records: Records, sha256: str, target: str) -> None:
    """Note that ``sha256`` is on ``target``."""
    with records.db.write() as conn:
        exists = conn.execute(select(replication.c.sha256).where(
            replication.c.sha256 == sha256, replication.c.target == target)).first()
        if exists is None:
            conn.execute(insert(replication).values(sha256=sha256, target=target,
                                                    done_at=time.time()))  # fmt: skip


def oldest_unreplicated(records: Records, targets: list[str]) -> float | None:
    """When the oldest media blob missing from some target was committed, or None."""
    oldest: float | None = None
    with records.db.read() as conn:
        for target in targets:
            done = replication.alias()
            first = conn.execute(
                select(func.min(media.c.created_at))
                .outerjoin(done, and_(done.c.sha256 == media.c.sha256, done.c.target == target))
                .where(done.c.sha256.is_(None))).scalar()  # fmt: skip
            if first is not None and (oldest is None or first < oldest):
                oldest = float(first)
    return oldest


class Replicator:
    """The background copier of one origin."""

    def __init__(self, primary: BlobStore, replicas: list[Replica], staging: Staging,
                 records: Callable[[], Records]) -> None:  # fmt: skip
        self.primary = primary
        self.replicas = replicas
        self.staging = staging
        self._records = records

    async def copy(self, sha256: str, replica: Replica) -> None:
        """Put blob ``sha256`` on ``replica`` (nothing if it is there already)."""
        src, dst = self.primary, replica.store
        if await dst.exists(sha256):
            return
        if (isinstance(src, S3BlobStore) and isinstance(dst, S3BlobStore)
                and src.settings.endpoint == dst.settings.endpoint):  # fmt: skip
            await dst._call("copy_object", Key=dst.blob_key(sha256), CopySource={
                "Bucket": src.location.bucket, "Key": src.blob_key(sha256)})
            return
        name = f"replica-{secrets.token_hex(8)}.part"
        try:
            async with self.staging.writer(name) as writer:
                await writer.write(src.open(sha256), 2**62)
            await dst.commit(sha256, self.staging.path(name))
        finally:
            await self.staging.remove(name)

    async def run_once(self) -> int:
        """Copy one batch of pending blobs to every replica; how many were copied."""
        records, copied = self._records(), 0
        for replica in self.replicas:
            for sha, thumb in await asyncio.to_thread(pending, records, replica.name):
                # The thumbnail first: the media's row marks both as done.
                for blob in ([thumb] if thumb else []) + [sha]:
                    await self.copy(blob, replica)
                    copied += 1
                if thumb and isinstance(replica.store, S3BlobStore):
                    await replica.store.alias_thumbnail(sha, thumb)
                await asyncio.to_thread(mark_done, records, sha, replica.name)
        return copied

    async def run_forever(self, interval: float) -> None:
        """Copy, then wait ``interval`` when there was nothing left to copy."""
        while True:
            try:
                if await self.run_once():
                    continue
            except Exception:  # an unreachable replica must not end the loop
                log.exception("replication failed; retrying")
            await asyncio.sleep(interval)

    def lag(self, now: float) -> float:
        """Seconds since the oldest blob not yet on every replica was committed (0: none)."""
        if not self.replicas:
            return 0.0
        oldest = oldest_unreplicated(self._records(), [r.name for r in self.replicas])
        return 0.0 if oldest is None else max(0.0, now - oldest)


async def stop(task: asyncio.Task[None] | None) -> None:
    """Cancel the copier task and wait for it."""
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

"""What every part of the origin app shares: config, clock, stores, database, locks, keys.

`OriginCore` is built once per app. Its lifespan opens the `Records` database, and a
background task sweeps expired uploads and orphaned staging files from the start and every
``origin.cleanup_interval``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from email.utils import formatdate

import sqlalchemy.exc
from starlette.applications import Starlette
from starlette.requests import Request

from ..config import Config
from ..errors import HTTPError
from ..signing import DownloadSigner, SigningKey
from .auth import Authenticator, Principal
from .authz import ConversationAccess
from .blobstore import BlobStore
from .db import database_url
from .dbcalls import DbCalls
from .limits import UploadAllowance
from .metrics import OriginMetrics
from .records import Records, Upload
from .replication import Replica, Replicator
from .replication import stop as stop_replication
from .responses import DATABASE_UNAVAILABLE, out_of_space
from .s3staging import S3Staging, S3StagingWriter
from .s3store import S3BlobStore
from .staging import Staging, StagingBusy, StagingWriter
from .stores import open_store
from .tiers import TieredLocalBlobStore, check_lifecycle
from .uploadlocks import IN_PROGRESS, UploadLocks

log = logging.getLogger("edgeproxy.origin")

DIRECT = "direct"  # the protocol of uploads sent straight to the bucket (presigned PUT)
# How long /readyz waits for the database before calling the origin not ready (a load
# balancer's probe times out after a few seconds; the answer must come before that).
READY_TIMEOUT = 2.0
# Why an upload that failed is gone (410) rather than refused (409): failure → (error, message).
GONE = {"expired": ("upload_expired", "this upload has expired"),
        "terminated": ("upload_terminated", "this upload was terminated")}  # fmt: skip
# How often a request waiting for an upload's locks (`OriginCore.hold_upload`) tries again.
HOLD_POLL = 0.05
# How often an origin whose PostgreSQL server could not be reached tries to open it again.
REOPEN_INTERVAL = 2.0


class OriginCore:
    """State shared by the origin's handlers (see `edgeproxy.origin.app.create_app`)."""

    def __init__(self, config: Config, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.key = SigningKey.from_text(config.origin.signing_key)
        self.root = config.data_dir / "origin"
        self.staging = Staging(self.root / "staging")
        # Lock files of uploads (`_exclusive` without PostgreSQL), apart from the staged bytes.
        self.lockfiles = Staging(self.root / "locks")
        self.store: BlobStore = open_store(config.origin.store, config, self.root / "blobs")
        # Clients upload straight into the bucket when the store is one (direct upload).
        self.direct = self.store if isinstance(self.store, S3BlobStore) else None
        # Where upload bytes sent through the origin are staged: the bucket's multipart
        # uploads with the s3 store (any origin can resume them), else local disk.
        self.upload_staging: Staging | S3Staging = (
            S3Staging(self.direct, self._exclusive) if self.direct is not None
            else self.staging)  # fmt: skip
        self.replicator = Replicator(self.store, [
            Replica(spec, open_store(spec, config, self.root / "blobs"))
            for spec in config.origin.replicas], self.staging, lambda: self.records)
        self.database_url = database_url(config.origin.database, self.root / "origin.sqlite3")
        self._records: Records | None = None
        self._started = False  # between lifespan startup and shutdown
        self._ping: asyncio.Future[None] | None = None  # the readiness check under way
        self.locks = UploadLocks()
        self._demoted_until = 0.0  # media committed before this are already cold
        self.public = config.public_base_url.rstrip("/")
        self.auth = Authenticator(config.auth)
        self.access = ConversationAccess(config.auth, clock)
        self.signer = DownloadSigner.from_config(config.download_signing)
        self.allowance = UploadAllowance.from_config(config.limits)
        self.metrics = OriginMetrics(self._bounded_stats)
        self.db = DbCalls(config.origin.database_timeout)

    @property
    def records(self) -> Records:
        """The metadata database (open between lifespan startup and shutdown)."""
        if self._records is None:
            if self._started:  # a PostgreSQL server not reached yet (`_open`)
                raise DATABASE_UNAVAILABLE
            raise RuntimeError("the origin app is not started (run it with lifespan on)")
        return self._records

    def _stats(self) -> dict[str, int] | None:
        if self._records is None:
            return None
        # Tiers go by age, as the sweeper (local) or the lifecycle rule (s3) applies them.
        tiered = self.direct is not None or isinstance(self.store, TieredLocalBlobStore)
        cold_before = self.clock() - self.config.storage.cold_after if tiered else None
        try:
            stats = self._records.stats(cold_before)
        except sqlalchemy.exc.DBAPIError as exc:
            # The scrape goes on without the database's totals, as before it first opened:
            # a 503 made every counter dark, and the node look down, for the outage.
            log.warning("metrics: the database's totals left out: %s", exc)
            return None
        stats["replication_lag_seconds"] = int(self.replicator.lag(self.clock()))
        return stats

    async def _bounded_stats(self) -> dict[str, int] | None:
        try:
            return await self.db(self._stats)
        except HTTPError:  # (not answered in time: the scrape goes on without the totals)
            return None

    @asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        """Open the database; sweep what expired while we were down, and keep sweeping, in
        the background.

        A PostgreSQL server that cannot be reached at start (a container started before its
        database, say) is waited for in the background: until it is, requests that need it
        are 503 ``database_unavailable``, as when it goes away later, and /readyz says not
        ready. Any other failure to open (an SQLite file that cannot be, a newer schema)
        still fails the start.
        """
        self._started = True
        self._records = await self._open(first=True)
        background = asyncio.create_task(self._background())
        try:
            yield
        finally:
            background.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await background
            if self._records is not None:
                self._records.close()
            self._records = None
            self.db.close()
            self._started = False
            await self.access.aclose()

    async def _open(self, *, first: bool) -> Records | None:
        """The database opened, or None while its PostgreSQL server cannot be reached."""
        try:
            return await asyncio.to_thread(Records, self.database_url)
        except sqlalchemy.exc.OperationalError as exc:
            if not self.database_url.startswith("postgresql") or out_of_space(exc):
                raise
            if first:
                log.warning("the database cannot be reached (%s); answering 503 "
                            "database_unavailable until it can", type(exc.orig).__name__)
            return None

    async def _background(self) -> None:
        if self._records is None:
            await self._reopen()
        # The first sweep (what expired while we were down) and the check of the bucket's
        # tier rules run beside the requests, as every later sweep does: an object store
        # that stalled held the start for minutes and then failed it. Expired uploads are
        # refused by their own checks meanwhile.
        copier = None
        if self.replicator.replicas:
            copier = asyncio.create_task(self.replicator.run_forever(
                self.config.origin.replication_interval))
        try:
            await self._maintain()
        finally:
            await stop_replication(copier)

    async def _reopen(self) -> None:
        while self._records is None:
            await asyncio.sleep(REOPEN_INTERVAL)
            try:
                self._records = await self._open(first=False)
            except Exception:  # (a newer schema, say) the log says why; the 503s go on
                log.exception("opening the database failed")
        log.warning("the database can be reached now: serving")

    @asynccontextmanager
    async def _exclusive(self, name: str) -> AsyncIterator[None]:
        """Hold upload ``name`` against every process sharing the database: a PostgreSQL
        advisory lock, or (SQLite: one box) a flock in the local staging directory."""
        db = self.records.db
        if db.dialect == "postgresql":
            key = f"upload:{name}"
            conn = await self.db.holding(functools.partial(db.try_lock, key),
                                         lambda late: db.unlock(late, key))
            if conn is None:
                raise StagingBusy(name)
            try:
                yield
            finally:
                # (not answered in time: the server drops the lock with the connection)
                with contextlib.suppress(HTTPError):
                    await self.db(db.unlock, conn, key)
            return
        # The lock file stays (unlinking it would let two openers lock two inodes); the
        # orphan sweep removes it once no unfinished upload owns it and it is older than any
        # upload may live. (Not in staging/: that holds bytes, and a lock must outlive them.)
        async with self.lockfiles.writer(f"{name}.lock"):
            yield

    @asynccontextmanager
    async def upload_writer(self, name: str) -> AsyncIterator[StagingWriter | S3StagingWriter]:
        """Hold upload ``name`` against every worker process and origin (`StagingBusy` if
        another has it): what PUT, PATCH, DELETE, confirm and the sweeper each take.

        Staged in the bucket, the staging writer is the database lock (`_exclusive`) already.
        Staged on local disk, `_exclusive` is taken first: the staging file's own flock is no
        lock once a confirm has moved that file into the store or a DELETE has removed it
        (the next opener creates a new file at the path and locks that one), so a confirm in
        another worker got in while a DELETE was between removing the bytes and recording it
        (and answered 422 size_mismatch for bytes that were fine).
        """
        async with AsyncExitStack() as held:
            if self.direct is None:
                await held.enter_async_context(self._exclusive(name))
            yield await held.enter_async_context(self.upload_staging.writer(name))

    @asynccontextmanager
    async def hold_upload(self, media_id: str, name: str, *, wait: float) -> AsyncIterator[None]:
        """Hold upload ``media_id`` as PUT, PATCH, DELETE and the sweeper do: this process's
        lock, then ``name``'s lock that every worker process sees (`upload_writer`). If anyone has
        either, try again for up to ``wait`` seconds, then answer 409 ``upload_in_progress``.

        Polled, not blocked on: the staging lock is a non-blocking flock or advisory lock,
        and a bound keeps a caller from hanging behind whoever holds the upload.
        """
        give_up = time.monotonic() + wait
        async with AsyncExitStack() as held:
            while True:
                try:
                    await held.enter_async_context(self.locks.hold(media_id, wait=False))
                    await held.enter_async_context(self.upload_writer(name))
                    break
                except (HTTPError, StagingBusy) as exc:
                    if exc is not IN_PROGRESS and not isinstance(exc, StagingBusy):
                        raise
                    await held.aclose()  # (this process's lock, if only the other was busy)
                    if time.monotonic() >= give_up:
                        raise IN_PROGRESS from None
                    await asyncio.sleep(HOLD_POLL)
            yield

    async def readiness(self) -> str | None:
        """What keeps this origin from serving (`Lifecycle`'s probe): its database, not
        answering within `READY_TIMEOUT`, or failing. Probes that come while one is running
        share it, so a database that hangs holds one thread, not one per load balancer."""
        if self._records is None:
            return "the database is not open"
        if self._ping is None or self._ping.done():
            self._ping = asyncio.ensure_future(asyncio.to_thread(self._records.ping))
            # (its error is read here, or by the probe still waiting, never left unread)
            self._ping.add_done_callback(lambda f: f.cancelled() or f.exception())
        try:
            await asyncio.wait_for(asyncio.shield(self._ping), READY_TIMEOUT)
        except TimeoutError:
            return f"the database did not answer within {READY_TIMEOUT:g} s"
        except Exception as exc:  # any driver error: the answer is the same
            log.warning("readiness: the database fails: %s", exc)
            return "the database fails (the origin's log says how)"
        return None

    # --- auth ----------------------------------------------------------------------------------

    def principal(self, request: Request) -> Principal:
        """The authenticated caller; 401 without a valid bearer token."""
        return self.auth.authenticate(request.headers.get("authorization"))

    def user(self, request: Request) -> str:
        """The authenticated caller's user id (the JWT ``sub``); 401 otherwise."""
        return self.principal(request).user

    async def check_download(self, upload: Upload, who: Principal) -> None:
        """403 (or 503) unless ``who`` may have ``upload``'s signed URL: a participant of its
        conversation when conversation access is configured, else its uploader."""
        if upload.conversation_id is not None and self.access.enabled:
            await self.access.check(who, "download", upload.conversation_id, upload.media_id)
        else:
            self.check_owner(upload, who.user)

    @staticmethod
    def check_owner(upload: Upload, user: str) -> None:
        """403 unless ``user`` owns ``upload`` (uploads from before auth have no owner)."""
        if upload.owner is not None and upload.owner != user:
            raise HTTPError(403, "forbidden", f"upload {upload.media_id} belongs to another user")

    # --- cleanup -------------------------------------------------------------------------------

    async def _maintain(self) -> None:
        if self.direct is not None:
            await check_lifecycle(self.direct, self.config.storage)  # (warns, never raises)
        await self._sweep_forever()

    async def _sweep_forever(self) -> None:
        interval = max(self.config.origin.cleanup_interval, 1.0)
        while True:
            try:
                await self.sweep()
            except Exception:  # a failed sweep must not end the loop; the next one retries
                log.exception("sweeping expired uploads failed")
            await asyncio.sleep(interval)

    async def sweep(self) -> int:
        """Expire unfinished uploads past their time and drop orphaned staging files.

        Returns how many uploads expired. An upload someone is writing right now (in this or
        another worker process) is skipped; the next sweep gets it.
        """
        now = self.clock()
        expired = 0
        for upload in await self.db(self.records.expired_uploads, now):
            with contextlib.suppress(HTTPError, StagingBusy):
                if await self._expire(upload, now):
                    expired += 1
        await self._sweep_orphans(now)
        if isinstance(self.store, TieredLocalBlobStore):
            await self._demote(self.store, now - self.config.storage.cold_after)
        return expired

    async def _demote(self, store: TieredLocalBlobStore, cutoff: float) -> None:
        """Move media that aged past ``storage.cold_after`` since the last sweep to cold."""
        aged = await self.db(self.records.media_between, self._demoted_until, cutoff)
        names = [m.sha256 for m in aged] + [m.thumb_sha256 for m in aged if m.thumb_sha256]
        await store.demote(names)
        self._demoted_until = max(self._demoted_until, cutoff)

    async def _expire(self, upload: Upload, now: float) -> bool:
        # A direct upload's staged object is held like any other: a confirm of it in another
        # worker must not find it deleted halfway.
        name = upload.staging_name or f"{upload.media_id}.part"
        async with (self.locks.hold(upload.media_id, wait=False),
                    self.upload_writer(name)):  # fmt: skip
            current = await self.db(self.records.get_upload, upload.media_id)
            if current is None or not current.is_expired(now):
                return False
            await self.upload_staging.remove(name)
            # False if a confirm committed it meanwhile (its staging file was already gone).
            if not await self.db(self.records.mark_failed, upload.media_id, "expired"):
                return False
        self.metrics.count("expired")
        return True

    async def discard_staged(self, upload: Upload) -> None:
        """Remove an upload's staged bytes, on local disk or (direct upload) in the bucket."""
        if self.direct is not None:
            await self.upload_staging.remove(upload.staging_name or upload.media_id)
        elif upload.staging_name:
            await self.staging.remove(upload.staging_name)

    async def _sweep_orphans(self, now: float) -> None:
        """Staging files no unfinished upload owns, older than an upload may live (left by a
        crash mid-confirm or mid-profile-photo)."""
        cutoff = now - self.config.origin.upload_expiry

        async def live_names() -> set[str]:
            return await self.db(self.records.live_staging_names)

        live = await live_names()

        def sweep() -> None:
            for entry in os.scandir(self.staging.root):
                if entry.name in live or not entry.is_file():
                    continue
                with contextlib.suppress(FileNotFoundError):
                    if entry.stat().st_mtime < cutoff:
                        os.unlink(entry.path)

        def sweep_locks() -> None:
            for entry in os.scandir(self.lockfiles.root):
                if entry.name.removesuffix(".lock") in live or not entry.is_file():
                    continue
                with contextlib.suppress(FileNotFoundError):
                    if entry.stat().st_mtime < cutoff:
                        os.unlink(entry.path)

        await asyncio.to_thread(sweep)
        await asyncio.to_thread(sweep_locks)
        if self.direct is not None:
            await self.direct.sweep_staging(live_names, cutoff)


def http_date(unix: float) -> str:
    """An IMF-fixdate (RFC 9110 §5.6.7), as tus ``Upload-Expires`` wants."""
    return formatdate(unix, usegmt=True)


def iso_utc(unix: float) -> str:
    """``2024-01-15T12:00:00Z``, as seed 000's ``upload_expires``."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(unix))

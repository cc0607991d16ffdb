"""What becomes of a flight's fills: committed to the store once whole (and, when the
answer's bytes have a known SHA-256, only once its whole body matched it), or discarded.

`fetch.Fetcher` runs the flight and lands its bytes; the fills' fate is decided here, in one
synchronous step each, so a request that misses a fill in the registry finds its slice stored.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
from collections.abc import Callable

from ..errors import FillAborted, StorageFault, UpstreamError
from . import policy
from .coalesce import Coalescer
from .fills import SliceFill
from .flight import Flight
from .foreign import Proof, vouch_file
from .meta import ObjectMeta
from .store import INLINE_MAX, CacheStore

log = logging.getLogger("edgeproxy.fetch")


class Commits:
    """Commits, vouches for and discards the fills of the flights of one node."""

    def __init__(self, store: CacheStore, coalescer: Coalescer,
                 on_integrity_failure: Callable[[str, str, str], None]) -> None:
        self.store = store
        self.coalescer = coalescer
        self.on_integrity_failure = on_integrity_failure

    def vouching(self, flight: Flight, size: int) -> None:
        """This flight fills every slice and stores none before its hash matches: say so in
        the stored facts, so that readers here and in other workers need not hash again."""
        meta = flight.meta
        if flight.hasher is not None and flight.whole and flight.store_meta == "now" \
                and meta is not None \
                and meta.length is not None and flight.first == 0 \
                and len(flight.fills) == policy.slice_count(meta.length, size) \
                and not any(fill.private for fill in flight.fills.values()):
            flight.meta = meta.evolve(vouching=True)
            with contextlib.suppress(StorageFault):  # readers then hash for themselves
                self.store.set_meta(flight.key, flight.meta)

    def complete(self, flight: Flight, fill: SliceFill) -> None:
        """``fill`` has all its bytes: commit it, or leave it to `vouch` while the answer's
        hash is pending. A slice whose bytes differ from the sum the upstream named for
        them (`slicesums`) is discarded: its readers abort before its last byte."""
        if fill.want is not None and fill.sum.value() != fill.want:
            why = (f"slice {fill.index}: xxh3 {fill.sum.value():016x} differs from the "
                   f"{fill.want:016x} the upstream named")
            fill.discard = True
            self.discard(fill, FillAborted(f"integrity check failed: {why}"))
            self.on_integrity_failure(flight.key, why, "upstream_slice")
            return
        if flight.hasher is not None:
            # Commits wait for the answer's digest (`vouch`), the earlier slices too: one
            # committed first would be served by hits before its bytes are known to be right,
            # and would have to be taken back on a mismatch. Followers read the bytes meanwhile,
            # but no answer's last byte goes out until its fills settle (`deliver.send_body`).
            return
        self.commit(flight, fill)

    def commit(self, flight: Flight, fill: SliceFill) -> None:
        """Finish ``fill`` and store its slice (kept in memory for its readers if the store
        refuses it)."""
        fill.finish()
        if fill.fd >= 0 and flight.version is not None:
            # for other workers' readers (and any reader once the slice is evicted)
            vouch_file(fill.fd, flight.version, fill.sum.value(), flight.proven)
        # Commit and unregister in one synchronous step: a request that misses the fill in
        # the registry finds the slice in the store.
        if flight.version is not None and not fill.discard and not fill.unstorable:
            data = fill.data()
            try:
                meta = flight.meta
                if flight.whole and meta is not None:
                    meta = meta.evolve(verified=True)  # the whole hash matched
                if flight.store_meta == "with_body" and meta is not None \
                        and fill.index == 0 and meta.length is not None:
                    self.store.commit_object(flight.key, meta, fill.path, fill.written, data,
                                             checksum=fill.sum.value())
                else:
                    self.store.commit_slice(flight.key, flight.version, fill.index, fill.path,
                                            fill.written, data, checksum=fill.sum.value())
                    self._unverify(flight, meta)
            except Exception as exc:  # a storage fault: followers still get the bytes
                # (a `StorageFault` was logged by the store, once a minute when it repeats)
                log.log(logging.DEBUG if isinstance(exc, StorageFault) else logging.ERROR,
                        "could not commit slice %s/%d: %s", flight.key, fill.index, exc)
                fill.keep_in_memory()  # the leader reads it there rather than fetch it again
        else:
            self._unlink(fill)
        self.coalescer.release(fill)

    def _unverify(self, flight: Flight, meta: ObjectMeta | None) -> None:
        """A slice stored by Range was not checked against the whole hash: clear the object's
        `verified` flag (a whole answer of it is then hashed as it is sent)."""
        if meta is not None and flight.digest is not None and not flight.whole \
                and flight.store_meta == "no" and meta.verified:
            flight.meta = meta.evolve(verified=False, vouching=False)
            self.store.set_meta(flight.key, flight.meta)

    @staticmethod
    def _unlink(fill: SliceFill) -> None:
        if fill.on_disk:
            fill.path.unlink(missing_ok=True)

    def vouch(self, flight: Flight, size: int) -> None:
        """The answer's body is all in: check it against every SHA-256 it must have, then
        release its held bytes and commit its slices.

        On a mismatch nothing of the object stays stored, every fill of the answer fails (its
        followers abort short of their end), and the failure is counted.
        """
        got = flight.hasher.hexdigest()
        wrong = [want for want in flight.checks if not hmac.compare_digest(got, want)]
        if wrong:
            why = f"body SHA-256 {got[:16]}… does not match the expected {wrong[0][:16]}…"
            self.store.purge(flight.key)  # (logged and counted by `on_integrity_failure`)
            err = FillAborted(f"integrity check failed: {why}")
            for fill in flight.fills.values():
                fill.discard = True
                if not fill.done:
                    self.discard(fill, err)
            whole = flight.whole and flight.digest in wrong
            self.on_integrity_failure(flight.key, why, "body_hash" if whole else "content_digest")
            return
        if flight.whole and flight.digest is not None \
                and hmac.compare_digest(got, flight.digest):
            # every byte of the body is the representation's: its readers' proof (and its
            # slice files', `vouch_file`), which no eviction of the stored facts takes
            flight.proven = Proof(got, self._tail(flight, size))
        meta = flight.meta
        if flight.whole and flight.store_meta == "now" and meta is not None \
                and meta.length is not None and all(
                    i in flight.fills and not flight.fills[i].discard
                    for i in range(policy.slice_count(meta.length, size))):
            # Every slice of the object came from this body, which matched its hash. Say so
            # before any slice is stored: a reader in another worker that found its slices
            # stored and these facts not yet would cut its answer short before the last byte
            # (`vouched_send`). The store makes this process's writes visible in order: a
            # slice, inline or a file, enters the index in one transaction with what was
            # written before it.
            flight.meta = meta.evolve(verified=True)
            with contextlib.suppress(StorageFault):
                self.store.set_meta(flight.key, flight.meta)
        for index in sorted(flight.fills):
            fill = flight.fills[index]
            if not fill.done and fill.error is None and fill.expected is not None \
                    and fill.written >= fill.expected:
                self.commit(flight, fill)

    @staticmethod
    def _tail(flight: Flight, size: int) -> tuple[int, str] | None:
        """The index and SHA-256 of the body's last slice if it is stored inline (no file
        carries a proof there: `Proof.tail`)."""
        length = flight.meta.length if flight.meta is not None else None
        if not length:
            return None
        last = policy.slice_count(length, size) - 1
        fill = flight.fills.get(last)
        if fill is None or fill.written > INLINE_MAX:
            return None
        return last, hashlib.sha256(fill.read(0, fill.written)).hexdigest()

    def discard(self, fill: SliceFill, err: BaseException) -> None:
        """Fail ``fill`` with ``err`` (its readers abort) and let its claim and file go."""
        fill.fail(err)
        self._unlink(fill)
        self.coalescer.release(fill)

    def drop_fills(self, flight: Flight, err: UpstreamError | None) -> None:
        """Discard every unfinished fill of ``flight`` (its answer brings no body to store)."""
        for fill in flight.fills.values():
            if not fill.done:
                self.discard(fill, err or FillAborted("no body to fill"))
        if err is not None and flight.whole:
            # nothing was committed (`_complete`) but the facts: drop them, so the next
            # request fetches the object whole again, hashed whole, not slice by slice
            self.store.purge(flight.key)

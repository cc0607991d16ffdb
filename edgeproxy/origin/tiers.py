"""Storage tiers by age (seed 000: hot 0-30 days, cold after 30), for both stores.

- Local store: `TieredLocalBlobStore` keeps new blobs in the hot directory and `demote` moves
  media (and its thumbnail) committed more than ``storage.cold_after`` ago, by the database's
  commit time, to ``storage.cold_dir`` (typically another, cheaper disk). A cold blob is
  still found and served; nothing else changes. Profile photos stay hot.
- s3 store: the bucket's own lifecycle rule moves ``blobs/`` to ``storage.cold_storage_class``
  (`lifecycle_rules`), applied by ``edgeproxy storage lifecycle --apply`` and checked when the
  origin starts (`check_lifecycle`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import shutil
from pathlib import Path
from typing import Any

from ..config import StorageConfig
from .blobstore import LocalBlobStore, fsync_dir
from .s3store import S3BlobStore

log = logging.getLogger("edgeproxy.origin")

COLD_RULE = "edgeproxy-cold-tier"
STAGING_RULE = "edgeproxy-abort-stale-multipart"


class TieredLocalBlobStore(LocalBlobStore):
    """A `LocalBlobStore` whose old blobs move to a cold directory and are still served."""

    def __init__(self, root: Path, cold_root: Path) -> None:
        super().__init__(root)
        self.cold = LocalBlobStore(cold_root)

    def path(self, sha256: str) -> Path:
        """The hot file, or the cold one if only that exists (reads, commits and deletes all
        go through here, so store-once also sees cold blobs)."""
        hot = super().path(sha256)
        if not hot.exists():
            cold = self.cold.path(sha256)
            if cold.exists():
                return cold
        return hot

    async def delete(self, sha256: str) -> bool:
        """Remove the blob from either tier."""
        removed = await super().delete(sha256)
        return await self.cold.delete(sha256) or removed

    async def demote(self, names: list[str]) -> int:
        """Move the blobs ``names`` to the cold directory; how many moved.

        Copy, fsync, rename into place, then unlink the hot file: the cold directory may be
        another filesystem, and a crash midway leaves a blob in both tiers, never in none.
        """
        return await asyncio.to_thread(self._demote, names)

    def _demote(self, names: list[str]) -> int:
        moved = 0
        for name in names:
            path = LocalBlobStore.path(self, name)
            with contextlib.suppress(FileNotFoundError):
                dest = self.cold.path(name)
                dest.parent.mkdir(parents=True, exist_ok=True)
                temp = dest.with_name(dest.name + ".moving")
                shutil.copy2(path, temp)  # keeps mtime: the blob's age
                with temp.open("rb") as f:
                    os.fsync(f.fileno())
                os.replace(temp, dest)
                fsync_dir(dest.parent)
                path.unlink()
                moved += 1
        return moved


def lifecycle_rules(store: S3BlobStore, storage: StorageConfig) -> list[dict[str, Any]]:
    """edgeproxy's lifecycle rules for the store's prefix: cold tier, stale multipart."""
    prefix = store.location.prefix
    return [
        {"ID": COLD_RULE, "Status": "Enabled", "Filter": {"Prefix": prefix + "blobs/"},
         "Transitions": [{"Days": max(1, math.ceil(storage.cold_after / 86400)),
                          "StorageClass": storage.cold_storage_class}]},
        # The origin's sweep aborts abandoned uploads too; this catches any it never saw.
        {"ID": STAGING_RULE, "Status": "Enabled", "Filter": {"Prefix": prefix + "staging/"},
         "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 2}},
    ]  # fmt: skip


def current_rules(store: S3BlobStore) -> list[dict[str, Any]]:
    """The bucket's lifecycle rules (none if it has no configuration)."""
    try:
        answer = store.client.get_bucket_lifecycle_configuration(Bucket=store.location.bucket)
    except store.client.exceptions.ClientError as exc:
        if "NoSuchLifecycleConfiguration" in str(exc):
            return []
        raise
    rules: list[dict[str, Any]] = answer.get("Rules", [])
    return rules


def missing_rules(store: S3BlobStore, storage: StorageConfig) -> list[str]:
    """IDs of our rules the bucket lacks or has with other settings."""
    have = {rule.get("ID"): rule for rule in current_rules(store)}
    return [rule["ID"] for rule in lifecycle_rules(store, storage)
            if not _same(have.get(rule["ID"]), rule)]  # fmt: skip


def _same(have: dict[str, Any] | None, want: dict[str, Any]) -> bool:
    return have is not None and all(have.get(k) == v for k, v in want.items())


def apply_lifecycle(store: S3BlobStore, storage: StorageConfig) -> list[dict[str, Any]]:
    """Put our rules on the bucket, keeping every rule of others; the rules now in force."""
    ours = lifecycle_rules(store, storage)
    ids = {rule["ID"] for rule in ours}
    rules = [r for r in current_rules(store) if r.get("ID") not in ids] + ours
    store.client.put_bucket_lifecycle_configuration(
        Bucket=store.location.bucket, LifecycleConfiguration={"Rules": rules})
    return rules


async def check_lifecycle(store: S3BlobStore, storage: StorageConfig) -> bool:
    """Warn at start if the bucket lacks the tier rules; whether they are in force."""
    try:
        missing = await asyncio.to_thread(missing_rules, store, storage)
    except Exception as exc:  # no permission to read it: say so, keep serving
        log.warning("could not read the lifecycle rules of %s: %s", store.location, exc)
        return False
    if missing:
        log.warning("bucket %s lacks lifecycle rules %s: run `edgeproxy storage lifecycle "
                    "--apply`", store.location, ", ".join(missing))  # fmt: skip
    return not missing

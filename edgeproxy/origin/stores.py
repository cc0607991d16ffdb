"""Which `BlobStore` ``origin.store`` names: a local directory (the default) or a bucket."""

from __future__ import annotations

from pathlib import Path

from ..config import Config
from ..s3 import S3Location, S3Settings, is_s3_url
from .blobstore import BlobStore, LocalBlobStore
from .s3store import S3BlobStore
from .tiers import TieredLocalBlobStore


def open_store(spec: str, config: Config, default: Path) -> BlobStore:
    """The store of ``spec``: "" (``default``), a directory, or ``s3://bucket/prefix``."""
    if is_s3_url(spec):
        return S3BlobStore(S3Location.parse(spec), S3Settings.resolve(config.s3))
    root = Path(spec).expanduser() if spec else default
    if config.storage.cold_dir:
        return TieredLocalBlobStore(root, Path(config.storage.cold_dir).expanduser())
    return LocalBlobStore(root)

"""``edgeproxy storage``: the object store's side of the configuration.

``edgeproxy storage lifecycle`` shows the bucket's lifecycle rules next to the ones edgeproxy
wants (cold tier after ``storage.cold_after``, stale multipart uploads aborted); ``--apply``
puts them on the bucket, keeping every rule that is not edgeproxy's.
"""

from __future__ import annotations

import json

import click

from ..errors import ConfigError
from .options import config_option, load


@click.group()
def storage() -> None:
    """Inspect and set up the origin's blob store."""


@storage.command()
@click.option("--apply", "apply_", is_flag=True, help="Put the rules on the bucket.")
@config_option
@click.pass_context
def lifecycle(ctx: click.Context, apply_: bool, config_path: str | None) -> None:
    """Show (or --apply) the bucket lifecycle rules of the storage tiers."""
    from ..origin.s3store import S3BlobStore
    from ..origin.stores import open_store
    from ..origin.tiers import apply_lifecycle, lifecycle_rules, missing_rules

    config, _ = load(ctx, config_path)
    store = open_store(config.origin.store, config, config.data_dir / "origin" / "blobs")
    if not isinstance(store, S3BlobStore):
        raise ConfigError("origin.store is not an s3:// bucket; a local store is tiered by "
                          "storage.cold_dir instead")  # fmt: skip
    if apply_:
        apply_lifecycle(store, config.storage)
        click.echo(f"applied {len(lifecycle_rules(store, config.storage))} rules to "
                   f"{store.location}")  # fmt: skip
        return
    missing = missing_rules(store, config.storage)
    click.echo(json.dumps({"bucket": str(store.location),
                           "rules": lifecycle_rules(store, config.storage),
                           "missing": missing}, indent=2))  # fmt: skip
    ctx.exit(1 if missing else 0)

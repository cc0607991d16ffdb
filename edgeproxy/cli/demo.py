"""``edgeproxy demo``: the whole flow on one machine, checked step by step."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

from ..errors import EdgeProxyError


class DemoFailed(EdgeProxyError):
    """A demo step did not produce what it should have."""


def make_sample_image(path: Path, size: tuple[int, int] = (1600, 1200)) -> None:
    """A PNG of gradients plus noise: a few MiB, so that it spans several cache slices."""
    from PIL import Image

    width, height = size
    horizontal = Image.linear_gradient("L").rotate(90).resize(size)
    vertical = Image.linear_gradient("L").resize(size)

    def noise() -> Image.Image:
        return Image.frombytes("L", size, os.urandom(width * height))

    # Noise keeps PNG from compressing the image to nothing; the gradients keep it an image.
    channels = (Image.blend(horizontal, noise(), 0.3), Image.blend(vertical, noise(), 0.3),
                noise())  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.merge("RGB", channels).save(path, "PNG")


def _mib(n: int) -> str:
    return f"{n / 1024**2:.2f} MiB"


def run_demo(config_path: str | None, *, echo: Any = click.echo) -> None:
    """The README's walk-through; raises on the first step that does not check out."""
    import hashlib

    from .. import crypto
    from ..client import MediaClient
    from ..origin.auth import mint_token
    from .stack import Stack

    stack = Stack(config_path)
    if not stack.config.auth.jwt_secret:
        raise DemoFailed("the demo signs its own API token and needs auth.jwt_secret")
    api_token = mint_token(stack.config.auth.jwt_secret, "demo", ttl=3600)
    workdir = stack.config.data_dir / "demo"
    echo(f"1. Starting the stack from {config_path or 'built-in defaults'} ...")
    with stack:
        for role, url in stack.urls.items():
            echo(f"   {role:<7} {url}")
        edge = stack.urls["edge"]

        sample = workdir / "sample.png"
        make_sample_image(sample)
        original = sample.read_bytes()
        echo(f"2. Made a sample image {sample} (1600x1200 PNG, {_mib(len(original))})")

        with MediaClient(stack.urls["origin"], token=api_token, cdn_url=edge) as client:
            payload = client.upload(sample)
            payload_file = workdir / "sample.payload.json"
            payload_file.write_text(json.dumps(payload, indent=2) + "\n")
            blob_size = crypto.enc_length(payload["file_length"])
            echo(f"3. Encrypted on this machine and uploaded: media_id {payload['media_id']}\n"
                 f"   blob {_mib(blob_size)}, sha256 {payload['file_enc_sha256'][:16]}...\n"
                 f"   media_url {payload['media_url']}\n"
                 f"   message payload (key included) in {payload_file}")  # fmt: skip

            for n, expect in ((4, "MISS"), (5, "HIT")):
                out = workdir / f"download-{n}.png"
                result = client.download(payload, out)
                same = out.read_bytes() == original
                echo(f"{n}. Whole download via the edge: {result.bytes_fetched} blob bytes, "
                     f"X-Cache: {result.x_cache}; decrypted file identical: {same}")  # fmt: skip
                if not same:
                    raise DemoFailed(f"{out} differs from {sample}")
                # X-Cache lists each tier, nearest first: "MISS from edge, MISS from shield".
                verdict = (result.x_cache or "").split(",")[0].strip().upper()
                if not verdict.startswith(expect):
                    raise DemoFailed(f"expected the edge to report a {expect}, "
                                     f"got X-Cache {result.x_cache!r}")  # fmt: skip

            start, end = 1000, 99999
            out = workdir / "range.bin"
            result = client.download(payload, out, byte_range=(start, end))
            plan = crypto.plan_range(start, end, payload["file_length"])
            same = out.read_bytes() == original[start : end + 1]
            echo(f"6. Plaintext bytes {start}-{end} via the edge: fetched blob bytes "
                 f"{plan.blob_start}-{plan.blob_end} (chunks {plan.first_chunk}-"
                 f"{plan.last_chunk}), X-Cache: {result.x_cache}; "
                 f"{result.bytes_written} bytes, equal to the original's slice: {same}\n"
                 f"   the same encrypted bytes with curl:\n"
                 f"     curl -r {plan.blob_start}-{plan.blob_end} -o part.enc "
                 f"{result.url}")  # fmt: skip
            if not same:
                raise DemoFailed("the decrypted range differs from the original's slice")
            digest = hashlib.sha256(original).hexdigest()
            if digest != payload["file_sha256"]:
                raise DemoFailed("the payload's file_sha256 is not the original's")
    echo("7. Stack stopped. Demo OK.")

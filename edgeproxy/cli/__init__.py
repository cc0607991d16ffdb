"""The ``edgeproxy`` command line: run nodes or a stack, upload, download, administer."""

from .commands import cli, main

__all__ = ["cli", "main"]

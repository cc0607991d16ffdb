"""``*_file`` variants of secret settings: the value comes from a file (a Docker or Kubernetes
secret mounted as a file) instead of the config file or the environment.

A setting is secret when its dataclass field carries ``metadata={"secret": True}``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any, get_origin, get_type_hints

from .errors import ConfigError

SECRET_FILE_SUFFIX = "_file"


def _read_secret(path_value: Any, key: str, base: Path) -> str:
    if not isinstance(path_value, str) or not path_value:
        raise ConfigError(f"{key}: expected a file path, got {path_value!r}")
    path = base / path_value
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path}: {exc.strerror}") from None
    # `echo secret > file` and editors add a final newline that is no part of the secret.
    return text.rstrip("\r\n")


def read_secret_files(cls: type[Any], data: Any, where: str, base: Path) -> None:
    """Replace each ``<secret>_file`` key in ``data`` by ``<secret>`` read from that file
    (relative paths are relative to the config file). A mapping of secrets takes a mapping of
    files, merged key by key. Both ways for one secret is an error."""
    if not isinstance(data, dict):
        return  # _build reports the wrong type
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{where}.{f.name}" if where else f.name
        if dataclasses.is_dataclass(hints[f.name]) and f.name in data:
            read_secret_files(hints[f.name], data[f.name], key, base)
        file_name = f.name + SECRET_FILE_SUFFIX
        if not f.metadata.get("secret") or file_name not in data:
            continue
        files = data.pop(file_name)
        file_key = key + SECRET_FILE_SUFFIX
        if get_origin(hints[f.name]) not in (Mapping, dict):
            if f.name in data:
                raise ConfigError(f"{key} and {file_key} are both set; keep one")
            data[f.name] = _read_secret(files, file_key, base)
            continue
        current = data.setdefault(f.name, {})
        if not isinstance(files, dict) or not isinstance(current, dict):
            raise ConfigError(f"{file_key}: expected a mapping of names to file paths")
        for name, path_value in files.items():
            if name in current:
                raise ConfigError(f"{key}.{name} and {file_key}.{name} are both set; keep one")
            current[name] = _read_secret(path_value, f"{file_key}.{name}", base)

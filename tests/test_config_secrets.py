"""Config loading, the operator's side: misspelt EDGEPROXY_* variables fail naming themselves,
secrets come from ``*_file`` settings, and ``edgeproxy check-config``/``--version`` say so."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import edgeproxy
from edgeproxy.config import load_config
from edgeproxy.errors import ConfigError

SECRET = "s3cret-" + "x" * 40


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(("variable", "named"), [
    ("EDGEPROXY_EGDE__PORT", "'egde' is not a setting of the top level"),
    ("EDGEPROXY_EDGE__PROT", "'prot' is not a setting of edge"),
    ("EDGEPROXY_ORIGN__SIGNING_KEY", "'orign'"),
    ("EDGEPROXY_CACHE__SLICE_SIZE__X", "cache.slice_size has no sub-settings"),
    ("EDGEPROXY_ORIGIN__PORT_FILE", "'port_file' is not a setting of origin"),  # not a secret
])  # fmt: skip
def test_unknown_env_variable_fails_naming_it(variable: str, named: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, env={variable: "1"})
    assert variable in str(info.value) and named in str(info.value)


def test_non_setting_variables_stay_allowed(tmp_path: Path) -> None:
    env = {"EDGEPROXY_CONFIG": "x.yaml", "EDGEPROXY_TOKEN": "jwt", "EDGEPROXY_ROLE": "edge",
           "EDGEPROXY_UPSTREAM": "http://x", "EDGEPROXY_SECRETS_FILE": "s.env",
           "EDGEPROXY_ADMIN_TOKEN": "adm", "EDGEPROXY_DOWNLOAD_SIGNING__KEYS__K1": SECRET,
           "EDGEPROXY_DATA_DIR": str(tmp_path)}  # fmt: skip
    config = load_config(None, env=env)
    assert config.admin_token == "adm"
    assert config.download_signing.keys["k1"] == SECRET


def test_every_secret_has_a_file_variant(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    for name in ("signing", "jwt", "k1", "k2", "admin"):
        # A trailing newline, as `echo value > file` leaves, is no part of the secret.
        write(tmp_path / "secrets", name, f"{name}-{SECRET}\n")
    path = write(tmp_path, "config.yaml", """
origin:
  signing_key_file: secrets/signing      # relative to this file
auth:
  jwt_secret_file: secrets/jwt
download_signing:
  keys_file: {k1: secrets/k1}
  current: k2
""")
    env = {"EDGEPROXY_ADMIN_TOKEN_FILE": str(tmp_path / "secrets/admin"),
           "EDGEPROXY_DOWNLOAD_SIGNING__KEYS_FILE__K2": str(tmp_path / "secrets/k2")}
    config = load_config(path, env=env)
    assert config.origin.signing_key == f"signing-{SECRET}"
    assert config.auth.jwt_secret == f"jwt-{SECRET}"
    assert dict(config.download_signing.keys) == {"k1": f"k1-{SECRET}", "k2": f"k2-{SECRET}"}
    assert config.admin_token == f"admin-{SECRET}"
    assert SECRET not in repr(config)


@pytest.mark.parametrize(("text", "env", "message"), [
    ("origin: {signing_key: abcdefghijklmnopqrstuv, signing_key_file: key}\n", {},
     "origin.signing_key and origin.signing_key_file are both set"),
    ("origin: {signing_key_file: key}\n", {"EDGEPROXY_ORIGIN__SIGNING_KEY": SECRET},
     "origin.signing_key and origin.signing_key_file are both set"),
    ("download_signing: {keys: {k1: abcdefghijklmnopqrst}, keys_file: {k1: key}}\n", {},
     "download_signing.keys.k1 and download_signing.keys_file.k1 are both set"),
    ("download_signing: {keys_file: key}\n", {},
     "download_signing.keys_file: expected a mapping"),
    ("origin: {signing_key_file: missing}\n", {},
     "origin.signing_key_file: cannot read"),
    ("admin_token_file: 7\n", {}, "admin_token_file: expected a file path"),
    ("auth: {jwt_secret_file: short}\n", {}, "auth.jwt_secret: must be at least 32 bytes"),
])  # fmt: skip
def test_secret_file_errors(tmp_path: Path, text: str, env: dict[str, str],
                            message: str) -> None:  # fmt: skip
    write(tmp_path, "key", SECRET + "\n")
    write(tmp_path, "short", "too short\n")
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_config(write(tmp_path, "config.yaml", text), env=env)


def run_cli(*args: str, env: dict[str, str] | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
    base = {k: v for k, v in __import__("os").environ.items() if not k.startswith("EDGEPROXY_")}
    return subprocess.run([sys.executable, "-m", "edgeproxy", *args], capture_output=True,
                          text=True, timeout=60, env=base | (env or {}), cwd=cwd,
                          check=False)  # fmt: skip


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"edgeproxy {edgeproxy.__version__}"


def test_check_config(tmp_path: Path) -> None:
    good = write(tmp_path, "good.yaml", "edge: {port: 9000}\n")
    result = run_cli("check-config", "--config", str(good), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\n") == 1 and "config OK" in result.stdout
    assert str(good) in result.stdout and "edge :9000" in result.stdout

    bad = write(tmp_path, "bad.yaml", "edge: {port: 70000}\n")
    result = run_cli("check-config", "--config", str(bad), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.strip() == ("edgeproxy: config error: edge.port: expected a port "
                                     "0-65535, got 70000")  # fmt: skip

    result = run_cli("check-config", "--config", str(good), cwd=tmp_path,
                     env={"EDGEPROXY_EGDE__PORT": "9090"})  # fmt: skip
    assert result.returncode == 2
    assert "EDGEPROXY_EGDE__PORT" in result.stderr

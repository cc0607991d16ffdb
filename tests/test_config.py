"""Config loading: defaults, the shipped config.yaml, env overrides, parsing and errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edgeproxy.config import (
    Config,
    FreeSpace,
    load_config,
    parse_duration,
    parse_free_space,
    parse_size,
)
from edgeproxy.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_defaults_without_a_file() -> None:
    config = load_config(None, env={})
    assert config.origin.port == 8082
    assert config.shield.port == 8081 and config.shield.upstream == "http://127.0.0.1:8082"
    assert config.edge.port == 8080 and config.edge.upstream == "http://127.0.0.1:8081"
    assert config.data_dir.is_absolute()
    assert [c.name for c in config.content_classes] == ["thumbnail", "media", "profile_photo"]
    assert config.origin.base_url == "http://127.0.0.1:8082"


def test_shipped_config_yaml_loads_and_matches_the_design() -> None:
    config = load_config(REPO / "config.yaml", env={})
    assert config.data_dir == (REPO / "var").resolve()
    assert config.public_base_url == "http://127.0.0.1:8080"
    assert (config.origin.host, config.origin.port) == ("127.0.0.1", 8082)
    assert (config.shield.port, config.shield.upstream) == (8081, "http://127.0.0.1:8082")
    assert (config.edge.port, config.edge.upstream) == (8080, "http://127.0.0.1:8081")
    day = 86400.0
    ttls = {c.name: (c.paths, c.ttl.edge, c.ttl.shield) for c in config.content_classes}
    assert ttls == {
        "thumbnail": (("/v/t1/*/thumb",), 7 * day, 30 * day),
        "media": (("/v/t1/*",), 7 * day, 30 * day),
        "profile_photo": (("/pp/*",), 1 * day, 7 * day),
    }
    assert config.content_classes[0].name == "thumbnail"  # first match wins
    assert config.cache.slice_size == 1024**2
    assert config.origin.upload_url_ttl == 300
    # The file spells out the defaults: apart from where it lives, it is the default config.
    assert config.replace(data_dir=Config().data_dir) == Config()


def test_shipped_config_loads_from_the_repo_root_by_relative_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(REPO)
    assert load_config("config.yaml", env={}).edge.port == 8080


def test_env_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, "edge:\n  port: 8000\n")
    env = {"EDGEPROXY_EDGE__PORT": "9090", "EDGEPROXY_DATA_DIR": str(tmp_path / "d"),
           "EDGEPROXY_CACHE__SLICE_SIZE": "2MiB", "EDGEPROXY_CONFIG": "ignored.yaml",
           "OTHER": "x"}  # fmt: skip
    config = load_config(path, env=env)
    assert config.edge.port == 9090
    assert config.data_dir == tmp_path / "d"
    assert config.cache.slice_size == 2 * 1024**2
    assert config.shield.port == 8081  # untouched


def test_relative_data_dir_is_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "c.yaml"
    path.write_text("data_dir: ./here\n")
    assert load_config(path, env={}).data_dir == (tmp_path / "sub" / "here").resolve()


@pytest.mark.parametrize(
    ("text", "seconds"),
    [(300, 300.0), ("300", 300.0), ("300s", 300.0), ("5m", 300.0), ("2h", 7200.0),
     ("7d", 604800.0), ("1w", 604800.0), ("250ms", 0.25), ("1.5m", 90.0), (0, 0.0)],
)  # fmt: skip
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "size"),
    [(1048576, 1048576), ("1MiB", 1048576), ("1mib", 1048576), ("50MB", 50_000_000),
     ("64KiB", 65536), ("2GiB", 2 * 1024**3), ("10", 10), ("1.5KiB", 1536), ("7b", 7)],
)  # fmt: skip
def test_sizes(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["5 parsecs", "-5m", "m", True, "1e3", float("nan"), float("inf"),
                                 1e300, "99999999999d"])
def test_bad_durations(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


@pytest.mark.parametrize("bad", ["1XB", "MiB", False, "-1", "lots", 2**64, "9999999999TiB"])
def test_bad_sizes(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_size(bad)


# cache.min_free: a percentage of the volume, a size, or both (the smaller); reserve of a
# 32 MiB and of a 1 TiB volume.
@pytest.mark.parametrize(
    ("text", "small", "large"),
    [("5%, 256MiB", 1677721, 256 * 1024**2), ("256MiB, 5%", 1677721, 256 * 1024**2),
     (["5%", "256MiB"], 1677721, 256 * 1024**2), ("10%", 3355443, 1024**4 // 10),
     ("1GiB", 1024**3, 1024**3), (1048576, 1048576, 1048576), ("0", 0, 0), ("0%", 0, 0),
     ("0.5%", 167772, 5497558138)],
)  # fmt: skip
def test_free_space_reserves(text: object, small: int, large: int) -> None:
    reserve = parse_free_space(text)
    assert (reserve.of(32 * 1024**2), reserve.of(1024**4)) == (small, large)
    assert parse_free_space(str(reserve)) == reserve  # a round trip through YAML


@pytest.mark.parametrize("bad", ["", "lots", "100%", "5%, 6%", "1MiB, 2MiB", "-5%", True])
def test_bad_free_space(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_free_space(bad)


def test_free_space_default_and_env_override() -> None:
    assert load_config(None, env={}).cache.min_free == FreeSpace(5.0, 256 * 1024**2)
    config = load_config(None, env={"EDGEPROXY_CACHE__MIN_FREE": "2%"})
    assert config.cache.min_free == FreeSpace(2.0, None)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("edge:\n  prot: 8080\n", "edge.prot"),
        ("colour: blue\n", "colour"),
        ("edge:\n  port: eighty\n", "edge.port"),
        ("edge:\n  port: 70000\n", "edge.port"),
        ("shield:\n  port: -1\n", "shield.port"),
        ("shield:\n  upstream: ftp://x\n", "shield.upstream"),
        ("edge:\n  upstream: not a url\n", "edge.upstream"),
        ("public_base_url: cdn.example.com\n", "public_base_url"),
        ("cache:\n  slice_size: 1000\n", "cache.slice_size"),
        ("cache:\n  negative_ttl: soon\n", "cache.negative_ttl"),
        ("cache:\n  min_free: plenty\n", "cache.min_free"),
        ("origin:\n  workers: 0\n", "origin.workers"),
        ("log_level: loud\n", "log_level"),
        ("origin:\n  max_upload_size: [1]\n", "origin.max_upload_size"),
        ("content_classes:\n  - name: x\n    immutable: maybe\n", "content_classes[0].immutable"),
        # passed, and failed only under traffic (found from outside): a node "ok" answering
        # 500 to everything, cut answers, every request refused
        ("edge:\n  upstream: 'http://'\n", "edge.upstream"),
        ("edge:\n  upstream: 'http://[::1'\n", "edge.upstream"),
        ("shield:\n  upstream: 'http://127.0.0.1:99999'\n", "shield.upstream"),
        ("edge:\n  upstreams: ['http://a:1', 'http://b:0']\n", "edge.upstreams[1].url"),
        ("origin:\n  public_url: 'https://'\n", "origin.public_url"),
        ("public_base_url: 'http://'\n", "public_base_url"),
        ("cache:\n  read_chunk_size: 0\n", "cache.read_chunk_size"),
        ("cache:\n  upstream_timeout: 0\n", "cache.upstream_timeout"),
        ("cache:\n  fill_wait_timeout: 0s\n", "cache.fill_wait_timeout"),
        ("http_limits:\n  body_timeout: 0\n", "http_limits.body_timeout"),
        ("origin:\n  database_timeout: 0\n", "origin.database_timeout"),
        ("origin:\n  max_upload_size: 0\n", "origin.max_upload_size"),
        ("edge:\n  node_name: \"edge\\nX-Injected: 1\"\n", "edge.node_name"),
        ("shield:\n  node_name: 'my shield'\n", "shield.node_name"),
    ],
)
def test_bad_values_name_the_dotted_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), env={})
    assert key in str(info.value)


def test_bad_env_override_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"edge\.port"):
        load_config(None, env={"EDGEPROXY_EDGE__PORT": "http"})


def test_not_a_mapping_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="mapping"):
        load_config(write(tmp_path, "- a\n- b\n"), env={})
    with pytest.raises(ConfigError, match="YAML"):
        load_config(write(tmp_path, "edge: [unclosed\n"), env={})
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml", env={})


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None,
            ) -> subprocess.CompletedProcess[str]:  # fmt: skip
    return subprocess.run([sys.executable, "-m", "edgeproxy", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=30)  # fmt: skip


@pytest.mark.parametrize(
    ("args", "text", "key"),
    [
        (["serve", "--role", "edge", "--config", "{path}"], "edge:\n  port: 99999\n", "edge.port"),
        (["--config", "{path}", "up"], "shield:\n  upstream: nope\n", "shield.upstream"),
        (["upload", "{path}", "--config", "{path}"], "bogus: 1\n", "bogus"),
        (["demo", "--config", "{path}"], "cache:\n  slice_size: 1KiB\n", "cache.slice_size"),
        # YAML's .nan, .inf and huge floats were taken: the node started, then every
        # connection failed (a NaN timer) or every upload request (an expiry past SQLite's)
        (["serve", "--role", "edge", "--config", "{path}"],
         "edge:\n  port: 0\nhttp_limits:\n  header_timeout: .nan\n", "http_limits.header_timeout"),
        (["serve", "--role", "origin", "--config", "{path}"],
         "origin:\n  port: 0\n  upload_url_ttl: 1.0e+300\n", "origin.upload_url_ttl"),
        # (a size past SQLite's integers: the edge died at start with an OverflowError)
        (["serve", "--role", "edge", "--config", "{path}"],
         "edge:\n  port: 0\n  upstream: http://127.0.0.1:9\n  cache_size: 99999999999999999999\n",
         "edge.cache_size"),
    ],
)
def test_cli_bad_config_is_one_line_and_exit_2(tmp_path: Path, args: list[str], text: str,
                                               key: str) -> None:  # fmt: skip
    path = write(tmp_path, text)
    proc = run_cli(*(a.replace("{path}", str(path)) for a in args), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("edgeproxy: config error: ")
    assert key in lines[0]


def test_cli_reads_config_from_env_and_from_cwd(tmp_path: Path) -> None:
    import os

    bad = write(tmp_path, "edge:\n  port: 123456\n")
    env = {**os.environ, "EDGEPROXY_CONFIG": str(bad)}
    proc = run_cli("serve", "--role", "edge", cwd=REPO, env=env)
    assert proc.returncode == 2 and "edge.port" in proc.stderr
    # Without --config or $EDGEPROXY_CONFIG, ./config.yaml in the working directory is used.
    env.pop("EDGEPROXY_CONFIG")
    proc = run_cli("serve", "--role", "edge", cwd=tmp_path, env=env)
    assert proc.returncode == 2 and "edge.port" in proc.stderr
    # A bad override in the environment is a config error too.
    env["EDGEPROXY_SHIELD__PORT"] = "x"
    proc = run_cli("serve", "--role", "shield", "--config", str(REPO / "config.yaml"),
                   cwd=tmp_path, env=env)  # fmt: skip
    assert proc.returncode == 2 and "shield.port" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_config_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(b"edge:\n  node_name: \xff\xfe\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path, env={})


@pytest.mark.parametrize(("text", "key"), [
    # passed check-config, and `serve` failed (one with sqlalchemy's traceback), or a store
    # URL of another scheme became a local directory (found from outside)
    ("origin:\n  database: '{dir}'\n", "origin.database"),
    ("origin:\n  database: 'mysql://x/y'\n", "origin.database"),
    ("origin:\n  store: 'ftp://x/y'\n", "origin.store"),
    ("origin:\n  store: 's3://'\n", "origin.store"),
    ("origin:\n  store: '{file}'\n", "origin.store"),
    ("origin:\n  replicas: ['s3://b/p', 'gs://b/p']\n", "origin.replicas[1]"),
    ("storage:\n  cold_dir: '{file}'\n", "storage.cold_dir"),
    ("data_dir: '{file}'\n", "data_dir"),
])
def test_places_serve_would_open_are_checked_at_load(tmp_path: Path, text: str,
                                                      key: str) -> None:
    (tmp_path / "a-dir").mkdir()
    (tmp_path / "a-file").write_text("x")
    text = text.format(dir=tmp_path / "a-dir", file=tmp_path / "a-file")
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), env={})
    assert str(info.value).startswith(key), str(info.value)

"""Issue 10, TLS: HTTPS listeners from the config file alone, mTLS between tiers with a private
CA, and refusals (wrong CA, no client certificate) that answer 502 and log the reason."""

from __future__ import annotations

import json
import logging
import re
import ssl
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trustme

from edgeproxy import cache
from edgeproxy.config import load_config
from edgeproxy.errors import ConfigError
from edgeproxy.tls import client_context, server_options
from tests.nodes import NodeProcess
from tests.origins import TestOrigin, pattern
from tests.servers import free_port, serve


@dataclass
class PKI:
    """A private CA's files: one server certificate for 127.0.0.1 and one client certificate."""

    directory: Path
    ca: trustme.CA

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.directory / "ca.pem"))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    directory = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    server = ca.issue_cert("127.0.0.1", "localhost")
    server.cert_chain_pems[0].write_to_path(str(directory / "server.pem"))
    server.private_key_pem.write_to_path(str(directory / "server.key"))
    client = ca.issue_cert("shield.internal")
    client.cert_chain_pems[0].write_to_path(str(directory / "client.pem"))
    client.private_key_pem.write_to_path(str(directory / "client.key"))
    trustme.CA().cert_pem.write_to_path(str(directory / "other-ca.pem"))
    return PKI(directory, ca)


def origin_options(pki: PKI) -> dict[str, object]:
    """uvicorn options of an HTTPS origin that requires client certificates of the CA."""
    d = pki.directory
    return {"ssl_certfile": str(d / "server.pem"), "ssl_keyfile": str(d / "server.key"),
            "ssl_ca_certs": str(d / "ca.pem"), "ssl_cert_reqs": ssl.CERT_REQUIRED}


def test_full_flow_over_https_with_client_certificates(tmp_path: Path, pki: PKI) -> None:
    """Client → edge (HTTPS) → shield (HTTPS, mTLS) → origin (HTTPS, mTLS), every node's
    certificates named in one config file by paths relative to it."""
    for name in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key"):
        (tmp_path / "certs").mkdir(exist_ok=True)
        (tmp_path / "certs" / name).write_bytes((pki.directory / name).read_bytes())
    test_origin = TestOrigin()
    body = pattern(300_000)
    test_origin.put("/v/t1/obj", body)
    ports = {"shield": free_port(), "edge": free_port()}
    with serve(test_origin, **origin_options(pki)) as osrv:  # type: ignore[arg-type]
        upstream_tls = "{ca: certs/ca.pem, cert: certs/client.pem, key: certs/client.key}"
        tls = "{cert: certs/server.pem, key: certs/server.key}"
        config = tmp_path / "config.yaml"
        config.write_text(f"""\
data_dir: var
log_level: warning
shield:
  port: {ports["shield"]}
  upstream: {osrv.url}
  tls: {{cert: certs/server.pem, key: certs/server.key, client_ca: certs/ca.pem}}
  upstream_tls: {upstream_tls}
edge:
  port: {ports["edge"]}
  upstream: https://127.0.0.1:{ports["shield"]}
  tls: {tls}
  upstream_tls: {upstream_tls}
""")
        loaded = load_config(config)
        assert loaded.edge.base_url == f"https://127.0.0.1:{ports['edge']}"
        assert loaded.edge.tls.cert == str(tmp_path / "certs" / "server.pem")
        ctx = pki.context()
        # The shield refuses a client without a certificate, so its readiness is probed
        # with one.
        shield_ctx = pki.context()
        shield_ctx.load_cert_chain(tmp_path / "certs/client.pem", tmp_path / "certs/client.key")
        with NodeProcess(config, "shield", loaded.shield.base_url, verify=shield_ctx), \
                NodeProcess(config, "edge", loaded.edge.base_url, verify=ctx) as edge:
            first = httpx.get(edge.url + "/v/t1/obj", verify=ctx)
            second = httpx.get(edge.url + "/v/t1/obj", verify=ctx)
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                httpx.get(edge.url + "/healthz")  # the system CAs do not know ours
            with pytest.raises(httpx.HTTPError):  # no client certificate: refused
                httpx.get(loaded.shield.base_url + "/healthz", verify=ctx)
    assert first.status_code == 200 and first.content == body
    assert first.headers["x-cache"] == "MISS from edge, MISS from shield"
    assert second.headers["x-cache"] == "HIT from edge"
    assert test_origin.count("/v/t1/obj") >= 1


def _edge_in_front_of(tmp_path: Path, upstream: str, upstream_tls: str) -> cache.CacheNode:
    config = tmp_path / "config.yaml"
    config.write_text(f"data_dir: {tmp_path / 'var'}\nlog_level: warning\n"
                      f"edge: {{upstream: '{upstream}', upstream_tls: {upstream_tls}}}\n")
    return cache.create_app(load_config(config), "edge")


@pytest.mark.parametrize(("case", "upstream_tls", "detail"), [
    ("wrong CA", "{ca: %(d)s/other-ca.pem, cert: %(d)s/client.pem, key: %(d)s/client.key}",
     "CERTIFICATE_VERIFY_FAILED"),
    ("no client certificate", "{ca: %(d)s/ca.pem}", "(UPSTREAM_TLS.CERT,_KEY)"),
])  # fmt: skip
def test_refused_upstream_answers_502_and_logs_why(
        tmp_path: Path, pki: PKI, caplog: pytest.LogCaptureFixture, case: str,
        upstream_tls: str, detail: str) -> None:  # fmt: skip
    test_origin = TestOrigin()
    test_origin.put("/v/t1/obj", b"x" * 1000)
    with serve(test_origin, **origin_options(pki)) as osrv:  # type: ignore[arg-type]
        app = _edge_in_front_of(tmp_path, osrv.url, upstream_tls % {"d": pki.directory})
        with caplog.at_level(logging.WARNING, "edgeproxy"), serve(app) as edge:
            r = httpx.get(edge.url + "/v/t1/obj")
    assert r.status_code == 502, case
    assert r.headers["content-type"] == "application/json"
    assert json.loads(r.content)["error"] in ("upstream_unavailable", "bad_upstream_answer")
    assert test_origin.count("/v/t1/obj") == 0  # the handshake failed before any request
    assert detail in caplog.text.upper().replace(" ", "_"), caplog.text


# --- settings -----------------------------------------------------------------------------


@pytest.mark.parametrize(("yaml_text", "key"), [
    ("edge: {tls: {cert: s.pem}}", "edge.tls"),  # a cert needs its key
    ("edge: {tls: {cert: nope.pem, key: s.key}}", "edge.tls.cert"),  # missing file
    ("origin: {tls: {client_ca: s.pem}}", "origin.tls.client_ca"),  # mTLS without HTTPS
    ("shield: {upstream_tls: {key: s.key}}", "shield.upstream_tls"),
    ("shield: {upstream_tls: {ca: nope.pem}}", "shield.upstream_tls.ca"),
    ("log: {access: loud}", "log.access"),
])  # fmt: skip
def test_bad_tls_settings_name_the_key(tmp_path: Path, yaml_text: str, key: str) -> None:
    (tmp_path / "s.pem").write_text("x")
    (tmp_path / "s.key").write_text("x")
    config = tmp_path / "config.yaml"
    config.write_text(yaml_text + "\n")
    with pytest.raises(ConfigError, match="^" + re.escape(key) + r"\b"):
        load_config(config)


def test_listener_and_client_settings(tmp_path: Path, pki: PKI) -> None:
    d = pki.directory
    config = tmp_path / "config.yaml"
    config.write_text(f"edge: {{tls: {{cert: {d}/server.pem, key: {d}/server.key, "
                      f"client_ca: {d}/ca.pem}}, upstream_tls: {{verify: false}}}}\n")
    loaded = load_config(config)
    assert server_options(loaded.edge.tls)["ssl_cert_reqs"] == ssl.CERT_REQUIRED
    assert server_options(loaded.shield.tls) == {}  # no tls section: plain HTTP
    assert client_context(loaded.shield.upstream_tls) is None  # defaults: system trust
    unverified = client_context(loaded.edge.upstream_tls)
    assert unverified is not None and unverified.verify_mode == ssl.CERT_NONE


def test_up_serves_https_from_the_edge_with_cert_and_key_from_the_config(
        tmp_path: Path, pki: PKI) -> None:
    """`edgeproxy up` with `edge.tls` in the config file alone: the stack comes up (its health
    checks speak HTTPS to the edge) and the edge answers over HTTPS, trusted by the CA."""
    from edgeproxy.cli.stack import Stack
    from tests.servers import write_stack_config

    path, ports = write_stack_config(tmp_path)
    d = pki.directory
    text = path.read_text().replace(
        f'edge: {{port: {ports["edge"]}, ',
        f'edge: {{port: {ports["edge"]}, tls: {{cert: "{d / "server.pem"}", '
        f'key: "{d / "server.key"}"}}, ')
    path.write_text(text)
    with Stack(path) as stack:
        assert any(node.url.startswith("https://") for node in stack.nodes)
        r = httpx.get(f"https://127.0.0.1:{ports['edge']}/healthz", verify=pki.context())
        assert r.status_code == 200
        with pytest.raises(httpx.ConnectError):  # a client without the private CA refuses it
            httpx.get(f"https://127.0.0.1:{ports['edge']}/healthz")

"""The origin's OpenAPI description is true: it covers every route with its methods, it is a
valid OpenAPI 3.1 document whose examples validate, and schemathesis finds no server error
against a live origin."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from openapi_spec_validator import validate
from starlette.routing import Route

from edgeproxy.config import load_config
from edgeproxy.origin import create_app
from edgeproxy.origin.auth import mint_token
from edgeproxy.origin.openapi import PATHS, description
from tests.servers import serve
from tests.test_origin import Origin, make_blob, run_origin

ROOT = Path(__file__).resolve().parent.parent
# Starlette adds HEAD to every GET route on its own.
IMPLIED = {"GET": {"HEAD"}}


def app_routes(data_dir: Path) -> dict[str, set[str]]:
    app = create_app(load_config(None, env={"EDGEPROXY_DATA_DIR": str(data_dir)}))
    routes: dict[str, set[str]] = {}
    for route in app.routes:
        assert isinstance(route, Route)
        routes.setdefault(route.path, set()).update(route.methods or ())
    return routes


def test_every_route_is_described_with_its_methods(tmp_path: Path) -> None:
    described = {path: {m.upper() for m in ops if m != "parameters"}
                 for path, ops in PATHS.items()}  # fmt: skip
    routes = app_routes(tmp_path)
    for path, methods in routes.items():
        assert path in described, f"{path} is served but not described"
        implied = set().union(*(IMPLIED.get(m, set()) for m in described[path]))
        assert methods <= described[path] | implied, (path, methods, described[path])
        assert described[path] <= methods, (path, described[path], methods)
    assert set(described) == set(routes)


def test_the_description_is_valid_openapi_3_1() -> None:
    validate(description())


def examples(node: Any) -> Iterator[tuple[dict[str, Any], Any]]:
    """Every (schema, example) pair in the document."""
    if isinstance(node, dict):
        if "example" in node:
            yield node, node["example"]
        for value in node.values():
            yield from examples(value)
    elif isinstance(node, list):
        for value in node:
            yield from examples(value)


def test_examples_validate_against_their_schemas() -> None:
    found = list(examples(description()))
    assert len(found) >= 2
    for schema, example in found:
        jsonschema.validate(example, {k: v for k, v in schema.items() if k != "example"})


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Origin]:
    with run_origin(tmp_path) as origin:
        yield origin


def test_served_and_example_requests_are_accepted(live: Origin) -> None:
    r = live.http.get("/openapi.json")
    assert r.status_code == 200 and r.json() == description()
    blob = make_blob()
    example = PATHS["/v1/media/upload/request"]["post"]["requestBody"]["content"][
        "application/json"]["schema"]["example"]
    body = {**example, "file_size": len(blob),
            "file_hash": "sha256:" + hashlib.sha256(blob).hexdigest()}
    r = live.http.post("/v1/media/upload/request", json=body)
    assert r.status_code == 200, r.text
    schema = PATHS["/v1/media/upload/request"]["post"]["responses"]["200"]["content"][
        "application/json"]["schema"]
    jsonschema.validate(r.json(), schema)


@pytest.mark.timeout(120)
def test_schemathesis_finds_no_server_error(tmp_path: Path) -> None:
    """Generated requests for every operation, with a valid JWT: never a 5xx (nor a crash)."""
    config = load_config(None, env={"EDGEPROXY_DATA_DIR": str(tmp_path / "var")})
    token = mint_token(config.auth.jwt_secret, "alice")
    with serve(create_app(config)) as origin:
        run = subprocess.run(
            [sys.executable, "-m", "schemathesis.cli", "run", f"{origin.url}/openapi.json",
             "--checks", "not_a_server_error", "--max-examples", "15", "--workers", "1",
             "--phases", "examples,coverage,fuzzing", "--max-time", "25",
             "--generation-database", "none", "--seed", "1",
             "-H", f"Authorization: Bearer {token}", "--request-timeout", "10",
             "--report-dir", str(tmp_path / "report"), "--no-color"],
            capture_output=True, text=True, timeout=100, cwd=tmp_path,
            env={**os.environ, "SCHEMATHESIS_HOOKS": "tests.schemathesis_hooks",
                 "PYTHONPATH": str(ROOT), "SCHEMATHESIS_TELEMETRY": "false"},
        )  # fmt: skip
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    ran = re.search(r"(\d+) generated, (\d+) passed", run.stdout)
    assert ran and ran.group(1) == ran.group(2) and int(ran.group(1)) > 100, run.stdout[-3000:]
    # every operation, but GET /openapi.json: schemathesis leaves out the schema it loaded
    operations = sum(len(set(ops) - {"parameters"}) for ops in PATHS.values()) - 1
    assert f"Tested: {operations}" in run.stdout, run.stdout[-3000:]

"""A target with a trailing slash is one the origin does not serve: a JSON 404, at the origin
and through the tiers, never a redirect.

Starlette's router redirects ``/v/t1/<sha>/`` to ``/v/t1/<sha>`` (307) by default, with a
``Location`` built from the request's ``Host``: an edge relayed it, and so pointed receivers
at the origin's own address, around the CDN, with no JSON body (found from outside).
"""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import MakeChain
from tests.test_origin import Origin, make_blob, sha

BLOB = make_blob()


@pytest.mark.parametrize("through", ["origin", "edge-shield"])
@pytest.mark.parametrize("suffix", ["/", "/thumb/", "//"])
def test_a_trailing_slash_is_a_json_404_never_a_redirect(
        bundled_origin: Origin, make_chain: MakeChain, through: str, suffix: str) -> None:
    done = bundled_origin.upload(BLOB)
    base = bundled_origin.url if through == "origin" else make_chain(bundled_origin.url).edge_url
    path = f"/v/t1/{sha(BLOB)}"
    r = httpx.get(base + path + suffix, follow_redirects=False, timeout=10)
    assert r.status_code == 404, (r.status_code, r.headers)
    assert "location" not in r.headers
    assert r.json()["error"] == "not_found"
    # (the blob itself is served, and the same for the API's paths)
    assert httpx.get(base + path, timeout=10).content == BLOB
    assert done["media_url"]
    r = httpx.post(bundled_origin.url + "/v1/media/upload/request/", json={},
                   headers=bundled_origin.auth("alice"), follow_redirects=False, timeout=10)
    assert r.status_code == 404 and "location" not in r.headers, (r.status_code, r.headers)

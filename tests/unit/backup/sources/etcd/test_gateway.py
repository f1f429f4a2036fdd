"""An endpoint that answers, but not as etcd does (a web server or a proxy's page at the client URL
the policy names): every gateway call fails naming the endpoint and what it sent, never with a
KeyError from the missing fields."""

from __future__ import annotations

import http.server
from collections.abc import Iterator

import pytest
from helpers import http_serving

from backup.sources.etcd.gateway import EtcdGateway
from policies.errors import SourceError


class NotEtcd(http.server.BaseHTTPRequestHandler):
    body = b"<html>Sign in</html>"

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(
    params=[b"<html>Sign in</html>", b"[1, 2]", b"{}", b'{"header": {"revision": "none"}}'],
    ids=["html", "a JSON list", "an empty object", "a revision that is not a number"],
)
def not_etcd(request: pytest.FixtureRequest) -> Iterator[str]:
    with http_serving(type("Handler", (NotEtcd,), {"body": request.param})) as port:
        yield f"http://127.0.0.1:{port}"


def test_a_range_answered_by_something_else_fails_naming_the_endpoint(not_etcd: str) -> None:
    with EtcdGateway(not_etcd) as gateway, pytest.raises(SourceError, match=f"{not_etcd}.*not etcd's answer"):
        gateway.request_keys(b"/registry/", limit=10)
        gateway.read_keys()

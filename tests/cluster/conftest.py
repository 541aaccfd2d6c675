"""The cluster tests' shared parts: a fake cloud metadata server on 127.0.0.1 (AWS IMDSv2 and GCP), the trainer
tests' real corpus."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.trainer.conftest import train_corpus  # noqa: F401  (a fixture shared with the trainer tests)

TOKEN = "fake-imds-token"


class MetadataServer:
    """What a spot instance's metadata server says: nothing, then (after `notice()`) an interruption notice."""

    def __init__(self, imds_v2: bool = True) -> None:
        self.imds_v2, self.noticed, self.requests = imds_v2, False, []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _answer(self, code: int, body: bytes = b"") -> None:
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_PUT(self) -> None:
                server.requests.append(("PUT", self.path, dict(self.headers)))
                if self.path == "/latest/api/token" and server.imds_v2:
                    return self._answer(200, TOKEN.encode())
                self._answer(404)

            def do_GET(self) -> None:
                server.requests.append(("GET", self.path, dict(self.headers)))
                if self.path == "/latest/meta-data/spot/instance-action":
                    if server.imds_v2 and self.headers.get("X-aws-ec2-metadata-token") != TOKEN:
                        return self._answer(401)
                    if server.noticed:
                        return self._answer(200, json.dumps({"action": "terminate",
                                                             "time": "2026-12-07T05:00:00Z"}).encode())
                    return self._answer(404)
                if self.path == "/computeMetadata/v1/instance/preempted":
                    if self.headers.get("Metadata-Flavor") != "Google":
                        return self._answer(403)
                    return self._answer(200, b"TRUE" if server.noticed else b"FALSE")
                self._answer(404)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def notice(self) -> None:
        """From now on: an interruption is coming."""
        self.noticed = True

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def metadata():
    """A fake metadata server (IMDSv2) on 127.0.0.1."""
    server = MetadataServer()
    yield server
    server.close()

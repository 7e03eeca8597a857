"""A real HTTP server on 127.0.0.1 serving byte strings the tests register."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class LocalServer:
    """Serves registered byte strings; ``truncate`` lies about Content-Length."""

    def __init__(self):
        self.routes: dict[str, tuple[int, bytes, bool]] = {}
        self.hits: list[str] = []
        routes, hits = self.routes, self.hits

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server API)
                hits.append(self.path)
                status, body, truncate = routes.get(self.path, (404, b"not found", False))
                self.send_response(status)
                self.send_header("Content-Length", str(len(body) * 2 if truncate else len(body)))
                self.end_headers()
                self.wfile.write(body)
                self.wfile.flush()
                if truncate:
                    self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def add(self, path: str, body: bytes, status: int = 200, truncate: bool = False) -> str:
        self.routes[path] = (status, body, truncate)
        return self.url(path)

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()

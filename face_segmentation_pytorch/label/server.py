"""The labelling page's HTTP server: the standard library's ``ThreadingHTTPServer``.

Rules every request goes through, in this order:

1. The token: ``?token=`` or the ``X-Token`` header must equal the one printed
   at start (compared in constant time); otherwise 403 and nothing happens.
2. Size: a body over :data:`MAX_MASK_BYTES` (a mask PNG) or
   :data:`MAX_JSON_BYTES` (anything else) is refused with 413 before it is read;
   a body without ``Content-Length`` with 411. Slow clients time out.
3. Paths: frames are asked for by index only; ``/static/`` serves the files
   the package ships, by exact name; ``/files/`` serves a file of the project,
   refused (403) when the path is absolute, has ``..``, or resolves through a
   link to outside the project. Nothing is written anywhere but the project.

Bad input gets a JSON ``{"error": "..."}`` with 400 (or 404 / 409) and changes nothing.
"""

from __future__ import annotations

import hmac
import json
import mimetypes
import re
import socket
import socketserver
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from ..errors import ConfigError, FaceSegmentationError
from .app import BadRequest, Conflict, LabelApp, NotFound
from .frames import FrameError
from .project import OutsideProject

__all__ = ["MAX_JSON_BYTES", "MAX_MASK_BYTES", "LabelServer", "make_server", "static_dir"]

#: Largest mask upload: an opaque RGBA PNG of an 8K frame that does not compress at all is ~133 MB;
#: the page's black-and-white masks compress to a few hundred kB even for 4K frames.
MAX_MASK_BYTES = 32 * 1024 * 1024
#: Largest JSON body (the page sends a few numbers).
MAX_JSON_BYTES = 64 * 1024

_FRAME_ROUTE = re.compile(r"^/api/(frame|pmap|mask|overlay|label)/([0-9]{1,9})(?:\.png)?$")
_TEXT_TYPES = {
    ".log": "text/plain",
    ".jsonl": "text/plain",
    ".yaml": "text/plain",
    ".txt": "text/plain",
    ".json": "application/json",
    ".js": "text/javascript",
    ".css": "text/css",
    ".html": "text/html",
}

_CSP = (
    "default-src 'self'; img-src 'self' blob: data:; media-src 'self'; connect-src 'self'; "
    "script-src 'self'; style-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


def static_dir() -> Path:
    """The folder of the page's files in the installed package."""
    return Path(str(resources.files("face_segmentation_pytorch.label") / "static"))


class _HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class LabelServer(ThreadingHTTPServer):
    """The server: the app, the token and the static files it serves."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], app: LabelApp, token: str) -> None:
        self.app = app
        self.token = token
        folder = static_dir()
        self.static = {p.name: p for p in folder.iterdir() if p.is_file()}
        if ":" in address[0]:  # an IPv6 literal such as ::1
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks the host's name up (socket.getfqdn), which can
        # wait for a DNS timeout on a machine without network; the name is not used.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}/?token={self.token}"


class _Handler(BaseHTTPRequestHandler):
    server: LabelServer
    protocol_version = "HTTP/1.1"
    server_version = "face_segmentation_pytorch.label"
    sys_version = ""
    #: Seconds a client may take to send its request (a stalled upload frees its thread).
    timeout = 60

    def log_message(self, format, *args) -> None:
        pass  # the page polls: a line per request would bury the useful output

    # ------------------------------------------------------------------ plumbing

    def _send(self, status: int, body: bytes, content_type: str, extra: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("X-Frame-Options", "DENY")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, data, status: int = 200) -> None:
        self._send(status, json.dumps(data).encode("utf-8"), "application/json")

    def _error(self, status: int, message: str) -> None:
        if self._route.startswith("/api/"):
            self._json({"error": message}, status)
        else:
            self._send(status, (message + "\n").encode("utf-8"), "text/plain; charset=utf-8")

    def _authorised(self, query: dict) -> bool:
        given = self.headers.get("X-Token") or (query.get("token") or [""])[0]
        return hmac.compare_digest(given.encode("utf-8", "replace"), self.server.token.encode("utf-8"))

    def _body(self, limit: int) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            self.close_connection = True
            raise _HTTPError(411, "send the body with a Content-Length (chunked uploads are not taken)")
        length = self.headers.get("Content-Length")
        if length is None:
            self.close_connection = True
            raise _HTTPError(411, "a Content-Length header is required")
        if not length.isdigit():
            self.close_connection = True
            raise _HTTPError(400, f"Content-Length {length!r} is not a number")
        n = int(length)
        if n > limit:
            # Not read: the connection closes instead.
            self.close_connection = True
            raise _HTTPError(413, f"the body is {n} bytes; at most {limit} are taken here")
        data = self.rfile.read(n)
        if len(data) != n:
            self.close_connection = True
            raise _HTTPError(400, f"the body ended after {len(data)} of {n} bytes")
        return data

    def _json_body(self) -> dict:
        data = self._body(MAX_JSON_BYTES)
        if not data:
            return {}
        try:
            obj = json.loads(data)
        except ValueError:
            raise _HTTPError(400, "the body is not JSON") from None
        if not isinstance(obj, dict):
            raise _HTTPError(400, "the body must be a JSON object")
        return obj

    def _dispatch(self) -> None:
        split = urlsplit(self.path)
        self._route = split.path
        query = parse_qs(split.query)
        if not self._authorised(query):
            self.close_connection = True
            raise _HTTPError(
                403, "forbidden: this address needs the token the label command printed (open the address it printed)"
            )
        handler = getattr(self, f"_{self.command.lower()}", None)
        if handler is None:
            raise _HTTPError(405, f"{self.command} is not used here")
        handler(split.path, query)

    def _handle(self) -> None:
        self._route = ""
        try:
            self._dispatch()
        except _HTTPError as e:
            self._error(e.status, str(e))
        except BadRequest as e:
            self._error(400, str(e))
        except (NotFound, IndexError) as e:
            self._error(404, str(e))
        except Conflict as e:
            self._error(409, str(e))
        except OutsideProject:
            self._error(403, "refused: that path is outside the project")
        except FrameError as e:
            self._error(500, str(e))
        except FaceSegmentationError as e:  # the model cannot be loaded, a weights file is broken
            self._error(500, str(e))
        except (BrokenPipeError, ConnectionResetError, TimeoutError):  # the client left or stalled
            self.close_connection = True
        except Exception as e:  # noqa: BLE001 - a bug must not take the page down; the terminal gets the trace
            traceback.print_exc()
            self.close_connection = True
            try:
                self._error(500, f"internal error: {type(e).__name__}: {e}")
            except OSError:
                pass

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle

    # ------------------------------------------------------------------ routes

    def _get(self, path: str, query: dict) -> None:
        app = self.server.app
        if path in ("/", "/index.html"):
            page = (self.server.static["index.html"]).read_text(encoding="utf-8")
            page = page.replace("__TOKEN__", self.server.token)
            self._send(200, page.encode("utf-8"), "text/html; charset=utf-8", {"Content-Security-Policy": _CSP})
            return
        if path.startswith("/static/"):
            name = unquote(path[len("/static/") :])
            file = self.server.static.get(name)
            if file is None or name == "index.html":
                raise _HTTPError(404, f"no static file {name!r}")
            self._send(200, file.read_bytes(), _content_type(file))
            return
        if path.startswith("/files/"):
            rel = unquote(path[len("/files/") :])
            file = app.project.resolve_relative(rel)
            if not file.is_file():
                raise _HTTPError(404, f"no file {rel!r} in the project")
            self._send(200, file.read_bytes(), _content_type(file))
            return
        if path == "/api/state":
            self._json(app.state())
            return
        if path == "/api/job":
            self._json({"job": app.job_status()})
            return
        m = _FRAME_ROUTE.match(path)
        if m is None or m.group(1) == "label":
            raise _HTTPError(404, f"no such page {path!r}")
        kind, i = m.group(1), int(m.group(2))
        body = {"frame": app.frame_png, "pmap": app.pmap_png, "mask": app.mask_png, "overlay": app.overlay_png}[kind](i)
        self._send(200, body, "image/png")

    def _head(self, path: str, query: dict) -> None:
        self._get(path, query)

    def _post(self, path: str, query: dict) -> None:
        app = self.server.app
        m = _FRAME_ROUTE.match(path)
        if m is not None and m.group(1) == "label":
            i = app.check_frame(int(m.group(2)))
            self._json(app.save_label(i, self._body(MAX_MASK_BYTES)))
            return
        if path == "/api/state":
            body = self._json_body()
            frame = body.get("current")
            if not isinstance(frame, int) or isinstance(frame, bool):
                raise BadRequest(f"current: expected a frame index, got {frame!r}")
            self._json(app.set_current(frame))
            return
        if path == "/api/train":
            body = self._json_body()
            self._json(app.start_train(body.get("epochs"), body.get("from", "best")))
            return
        if path == "/api/apply":
            self._json_body()
            self._json(app.start_apply())
            return
        if path == "/api/stop":
            self._json_body()
            self._json(app.stop_job())
            return
        raise _HTTPError(404, f"no such page {path!r}")

    def _put(self, path: str, query: dict) -> None:
        self._post(path, query)

    def _delete(self, path: str, query: dict) -> None:
        m = _FRAME_ROUTE.match(path)
        if m is None or m.group(1) != "label":
            raise _HTTPError(404, f"no such page {path!r}")
        self._json(self.server.app.delete_label(int(m.group(2))))


def _content_type(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in _TEXT_TYPES:
        return _TEXT_TYPES[suffix] + "; charset=utf-8"
    return mimetypes.guess_type(path.name)[0] or "application/octet-stream"


def make_server(app: LabelApp, host: str, port: int, token: str) -> LabelServer:
    """Bind the server (not yet serving).

    Raises:
        ConfigError: The port is taken, or the host cannot be bound (one line naming the key).
    """
    try:
        return LabelServer((host, port), app, token)
    except OSError as e:
        import errno

        if e.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"PORT={port} on {host} is in use by another program; give another PORT, or PORT=0 for any free one"
            ) from None
        if e.errno == errno.EACCES:
            raise ConfigError(
                f"PORT={port}: not allowed for this user (ports below 1024 need root); give PORT=8765"
            ) from None
        raise ConfigError(f"HOST={host} PORT={port}: cannot listen there ({e.strerror or e})") from None

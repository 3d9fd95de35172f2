"""The ML backend's HTTP side: routes, basic auth, body limits, JSON in and out, the images.

Binds 127.0.0.1 unless configured; any other address needs `basic_auth_user` and a password
file, the credential Label Studio's Model settings send ("Basic auth"). Bodies over
`max_body_mib` are refused (413) before being read; a body that is no JSON object is a 400.
Every error is a JSON object `{"status": "error", "error": ..., "hint": ...}`.
"""

from __future__ import annotations

import base64
import hmac
import ipaddress
import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from dal.errors import ConfigError, DalError
from dal.trainer.config import LabelStudioSection
from dal.trainer.labels.ls_backend import LabelStudioBackend
from dal.trainer.labels.ls_images import DATA_ROUTE, check_image_path, image_url
from dal.trainer.labels.ls_model import CurrentModel
from dal.trainer.labels.ls_tasks import RequestError
from dal.trainer.labels.readers import SampleIndex
from dal.trainer.registry import Registry
from dal.trainer.store import SampleStore

logger = logging.getLogger(__name__)

POST_ROUTES = {"/setup": "setup", "/predict": "predict", "/webhook": "webhook", "/train": "train"}
_IMAGE_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png"}


def read_password(settings: LabelStudioSection) -> str | None:
    """The basic-auth password from its file; a half-configured credential is a ConfigError."""
    user, path = settings.basic_auth_user, settings.basic_auth_pass_file
    if not user and path is None:
        return None
    if not user or path is None:
        raise ConfigError(
            "[labelstudio] basic_auth_user and basic_auth_pass_file go together",
            hint="set both (the password file mode 0600) or neither",
        )
    try:
        password = path.read_text().strip()
    except OSError as err:
        raise ConfigError(
            f"[labelstudio] basic_auth_pass_file {path}: {err.strerror}",
            hint="create it (mode 0600) or remove the key",
        ) from None
    if not password:
        raise ConfigError(f"[labelstudio] basic_auth_pass_file {path} is empty")
    return password


def base_url(settings: LabelStudioSection, host: str | None = None, port: int | None = None) -> str:
    """Where Label Studio reaches the backend: `public_url`, else http://host:port."""
    if settings.public_url:
        return settings.public_url.rstrip("/")
    host = settings.host if host is None else host
    port = settings.port if port is None else port
    return f"http://{host}:{port}"


def live_image_url(settings: LabelStudioSection) -> Callable[[str], str]:
    """Export name -> the backend's /data URL of that image (for `dal label export --live`)."""
    password, base = read_password(settings), base_url(settings)
    return lambda name: image_url(base, name, password)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Handler(BaseHTTPRequestHandler):
    server: LabelServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s " + format, self.address_string(), *args)

    def _send(self, status: int, body: bytes, content_type: str, extra: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, payload: Any, extra: dict | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json", extra)

    def _authorized(self) -> bool:
        password = self.server.password
        if password is None:
            return True
        header = self.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return False
        try:
            user, _, given = base64.b64decode(header[6:], validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        ok_user = hmac.compare_digest(user.encode(), self.server.settings.basic_auth_user.encode())
        return ok_user & hmac.compare_digest(given.encode(), password.encode())

    def _unauthorized(self) -> None:
        self._json(
            401,
            {"status": "error", "error": "basic auth required or wrong"},
            {"WWW-Authenticate": 'Basic realm="dal label backend"'},
        )

    def _body(self) -> Any:
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise RequestError(411, "Content-Length missing or not a number") from None
        limit = self.server.settings.max_body_mib << 20
        if length < 0 or length > limit:
            self.close_connection = True  # the unread body must not be taken for a request
            raise RequestError(413, f"body of {length} bytes; the limit is {limit}")
        raw = self.rfile.read(length)
        try:
            return json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as err:
            raise RequestError(400, f"body is not JSON: {err}") from None
        except RecursionError:
            raise RequestError(400, "body is JSON nested too deep") from None

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path.startswith(DATA_ROUTE):
            self._image(path)
            return
        if not self._authorized():
            self._unauthorized()
            return
        if path in ("/", "/health"):
            self._json(*self.server.backend.health())
        elif path == "/metrics":
            self._json(200, {})
        else:
            self._json(404, {"status": "error", "error": f"no route GET {path}"})

    do_HEAD = do_GET  # noqa: N815

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        if not self._authorized():
            self.close_connection = True
            self._unauthorized()
            return
        handler = POST_ROUTES.get(path)
        try:
            if handler is None:
                self.close_connection = True
                raise RequestError(404, f"no route POST {path}", hint=f"use {list(POST_ROUTES)}")
            status, payload = getattr(self.server.backend, handler)(self._body())
        except RequestError as err:
            logger.info("Label Studio %s refused (%d): %s", path, err.status, err.message)
            self._json(err.status, err.to_json())
            return
        except DalError as err:
            logger.warning("Label Studio %s failed: %s", path, err)
            self._json(500, {"status": "error", "error": str(err)})
            return
        except Exception:  # a bug: answer, log it, and keep serving the other requests
            logger.exception("Label Studio %s crashed", path)
            self._json(500, {"status": "error", "error": "internal error (see the trainer log)"})
            return
        self._json(status, payload)

    def _image(self, path: str) -> None:
        """A sample's image: by token (a browser's <img>) or basic auth."""
        name = check_image_path(path, self.server.password)
        if name is None and self._authorized():
            name = check_image_path(path, None)
        if name is None:
            self._unauthorized()
            return
        sample = SampleIndex(self.server.backend.store).find(None, name)
        kind = _IMAGE_TYPES.get(sample.path.suffix.lower()) if sample else None
        if sample is None or kind is None or not sample.path.is_file():
            self._json(404, {"status": "error", "error": f"no sample image {name!r}"})
            return
        self._send(200, sample.path.read_bytes(), kind, {"Cache-Control": "private, max-age=3600"})


class LabelServer(ThreadingHTTPServer):
    """The backend on its own threads: `start()`, `stop()`; `url` is where it listens."""

    daemon_threads = True

    def __init__(
        self, backend: LabelStudioBackend, settings: LabelStudioSection, host: str, port: int
    ) -> None:
        self.password = read_password(settings)
        if self.password is None and not _is_loopback(host):
            raise ConfigError(
                f"[labelstudio] host {host!r} is not loopback and no basic auth is set",
                hint="set basic_auth_user and basic_auth_pass_file, or bind 127.0.0.1",
            )
        self.backend = backend
        self.settings = settings
        try:
            super().__init__((host, port), _Handler)
        except OSError as err:
            raise ConfigError(
                f"[labelstudio] cannot listen on {host}:{port}: {err.strerror}"
            ) from None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def image_url(self, name: str) -> str:
        """The URL Label Studio loads a sample's image from (`name` = its export name)."""
        host, port = self.server_address[:2]
        return image_url(base_url(self.settings, host, port), name, self.password)

    def start(self) -> LabelServer:
        self._thread = threading.Thread(
            target=self.serve_forever, name="label-studio-backend", daemon=True
        )
        self._thread.start()
        logger.info("Label Studio ML backend on %s", self.url)
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self.shutdown()
            self._thread.join(5.0)
        self.server_close()
        self.backend.model.close()


def label_server(
    settings: LabelStudioSection,
    store: SampleStore,
    registry: Registry,
    on_train: Callable[[], None] | None = None,
    host: str | None = None,
    port: int | None = None,
) -> LabelServer:
    """The backend for a trainer's store and registry (not started); `host`/`port` override
    the section's (the CLI's --host/--port)."""
    backend = LabelStudioBackend(store, CurrentModel(registry), settings.min_score, on_train)
    return LabelServer(
        backend,
        settings,
        settings.host if host is None else host,
        settings.port if port is None else port,
    )

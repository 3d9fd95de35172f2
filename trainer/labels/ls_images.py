"""Image URLs the ML backend serves to Label Studio, and the sample a task's URL means.

Label Studio's browser loads `data.image` with a plain <img>, which cannot send basic auth.
So with a password configured, each URL carries its own token, `/data/<token>/<export name>`,
an HMAC of the name keyed with the password: a URL opens that one image and nothing else, and
changing the password revokes them all. Without a password (loopback only) it is `/data/<name>`.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import PurePosixPath
from urllib.parse import parse_qs, unquote, urlsplit

DATA_ROUTE = "/data/"
_TOKEN_BYTES = 16


def image_token(secret: str, name: str) -> str:
    digest = hmac.new(secret.encode(), b"dal-label-image\0" + name.encode(), hashlib.sha256)
    return digest.hexdigest()[: 2 * _TOKEN_BYTES]


def image_url(base_url: str, name: str, secret: str | None) -> str:
    """The URL of a sample's exported image (`name` = its export name) on this backend."""
    base = base_url.rstrip("/")
    if secret:
        return f"{base}{DATA_ROUTE}{image_token(secret, name)}/{name}"
    return f"{base}{DATA_ROUTE}{name}"


def check_image_path(path: str, secret: str | None) -> str | None:
    """The export name an /data/ request path asks for, None when its token is wrong."""
    parts = path[len(DATA_ROUTE) :].split("/")
    if secret:
        if len(parts) != 2:
            return None
        token, name = parts[0], unquote(parts[1])
        return name if hmac.compare_digest(token, image_token(secret, name)) else None
    return unquote(parts[0]) if len(parts) == 1 else None


def url_file_name(url: str) -> str:
    """The file name in a task's image URL: this backend's /data URLs, Label Studio's
    local-files (`?d=images/x.jpg`) and uploads, or a plain path."""
    parts = urlsplit(url)
    local = parse_qs(parts.query).get("d")
    path = local[0] if local else unquote(parts.path)
    return PurePosixPath(path.replace("\\", "/")).name

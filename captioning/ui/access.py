"""Who may use the page: Gradio's login from `--auth FILE` or `CAPTIONING_UI_AUTH`, and the rule that a page
reachable from other machines has one (or says loudly, with `--no-auth`, that it has none).

Passwords never reach a message, a log line or a repr: errors name the file and the line number only.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path

AUTH_ENV = "CAPTIONING_UI_AUTH"
Credentials = list[tuple[str, str]]


class AccessError(ValueError):
    """The page must not start: bad credentials, or a public address without a login."""


def is_loopback(host: str) -> bool:
    """127.x, ::1 and localhost reach this machine only; anything else (0.0.0.0, ::, a name) may not."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def parse_credentials(text: str, source: str) -> Credentials:
    """Lines `user:password`; `#` comments and blank lines ignored, spaces around each part dropped."""
    credentials: Credentials = []
    users: set[str] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, password = line.partition(":")
        user, password = user.strip(), password.strip()
        if not sep or not user or not password:
            raise AccessError(f"{source}, line {number}: expected user:password (both non-empty)")
        if user in users:
            raise AccessError(f"{source}, line {number}: user {user!r} is listed twice")
        users.add(user)
        credentials.append((user, password))
    if not credentials:
        raise AccessError(f"{source}: no user:password line")
    return credentials


def load_credentials(path: str | None, environ: Mapping[str, str] | None = None) -> Credentials | None:
    """The page's logins: from the file if one is given, else from the environment, else None."""
    environ = os.environ if environ is None else environ
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise AccessError(
                f"--auth {path}: cannot read it ({getattr(exc, 'strerror', None) or exc})"
            ) from None
        return parse_credentials(text, f"--auth {path}")
    value = environ.get(AUTH_ENV)
    if value:
        return parse_credentials(value, AUTH_ENV)
    return None


def check_exposure(host: str, port: int, credentials: Credentials | None, no_auth: bool) -> str | None:
    """Raise AccessError for a public page without a login; the warning to print for `--no-auth`, if any."""
    if credentials and no_auth:
        raise AccessError("--no-auth contradicts --auth (or CAPTIONING_UI_AUTH): give one or the other")
    if credentials or is_loopback(host):
        return None
    if not no_auth:
        raise AccessError(
            f"refusing to serve the page on {host!r} without a login: other machines could reach it. "
            f"Give --auth FILE (lines user:password) or set {AUTH_ENV}=user:password, "
            "or pass --no-auth to serve it to everyone anyway."
        )
    return (
        f"WARNING: the page on {host}:{port} has no login (--no-auth): anyone who can reach this machine on "
        f"port {port} can use this page and the server behind it."
    )

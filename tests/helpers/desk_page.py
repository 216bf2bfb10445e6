"""Signing in to the admin page over plain HTTP (httpx), for tests that read its HTML."""

from __future__ import annotations

import re

import httpx


async def sign_in(http: httpx.AsyncClient, base: str, token: str) -> httpx.Response:
    """The sign-in form as a browser posts it (its double-submit token included)."""
    form = await http.get(f"{base}/admin/login")
    login_csrf = re.search(r'name="login_csrf" value="([^"]+)"', form.text).group(1)
    return await http.post(f"{base}/admin/login", data={"token": token, "login_csrf": login_csrf, "next": "/admin/review"})


def csrf_of(html: str) -> str:
    """The session's CSRF token, from any signed-in page's forms."""
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)

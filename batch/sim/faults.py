"""The simulator's injected faults, as Groq and its edge proxy show them.

This module owns what each fault kind of ``SimConfig.faults`` looks like on the wire, except ``hang``,
which needs the server's wait: ``500``, ``503`` and ``498`` (flex capacity) are Groq's JSON error
bodies, ``502`` is the proxy's HTML page, ``malformed`` is a 200 whose JSON is cut in half, and
``drop`` closes the connection without a byte. Faults are drawn before the body is parsed, so they
cost no rate-limit budget.
"""

from __future__ import annotations

import json
import uuid

from aiohttp import web

from .schema import HttpError

_ERRORS = {
    "500": (500, "Internal Server Error", "internal_server_error", ""),
    "503": (503, "Service Unavailable", "service_unavailable", ""),
    "498": (498, "Capacity exceeded for flex tier. Please try again later or use the on_demand service tier.",
            "capacity_exceeded", "capacity_exceeded"),
}
_BAD_GATEWAY = ("<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad "
                "Gateway</h1></center>\r\n<hr><center>cloudflare</center>\r\n</body>\r\n</html>\r\n")


def fault_response(kind: str) -> web.Response | None:
    """The answer of a fault that is not a hang: a response, None to drop the connection, or the
    :class:`HttpError` raised for a JSON error."""
    if kind == "drop":
        return None
    if kind == "502":
        return web.Response(status=502, text=_BAD_GATEWAY, content_type="text/html")
    if kind == "malformed":
        choice = {"index": 0, "message": {"role": "assistant", "content": "..."}, "finish_reason": "stop"}
        whole = json.dumps({"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion",
                            "choices": [choice]})
        return web.Response(status=200, text=whole[: len(whole) // 2], content_type="application/json")
    status, message, type_, code = _ERRORS[kind]
    raise HttpError(status, message, type_=type_, code=code)

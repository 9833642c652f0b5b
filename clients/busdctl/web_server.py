"""The HTTP side of `busdctl web` (aiohttp): the page, its assets, a WebSocket of live updates, and
the JSON calls of the object browser, every one refused without the session's token.

Theory.  The page is a view of one bus, served to whoever holds the token printed with the URL
(secrets.token_urlsafe, compared in constant time): the token comes as ?token= on the URL (the
page adds it to each request it makes) or as an X-Busd-Token header. Without it, any request,
WebSocket handshakes included, gets 403 and nothing else. Everything the page can do goes through
the user's own bus connection with the calls busdctl makes, so it can do nothing busdctl could not.
A ticker sends each open WebSocket the map and the messages since the last tick; the browser keeps
the rest (its sequence diagram, pausing, filtering).
"""

from __future__ import annotations

import asyncio
import contextlib
import platform
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from . import __version__
from .connection import BusConnection
from .errors import BusError, CommandError, UsageError
from .web_bus import (call_method, describe, list_services, look_up_new_peers, mark_stand_ins, object_tree,
                      read_property)
from .web_model import BusPicture

STATIC = Path(__file__).resolve().parent / "web_static"
ASSETS = {"app.js": "text/javascript", "style.css": "text/css", "map.js": "text/javascript",
          "sequence.js": "text/javascript", "browser.js": "text/javascript"}
TOKEN_PLACEHOLDER = "__BUSD_TOKEN__"
TICK = 0.5  # seconds between updates to the page
BACKLOG = 300  # messages a page gets when it connects
STOP_TIMEOUT = 2.0  # seconds a request still running (a slow introspection) may finish in when busdctl web stops
MAX_PER_TICK = 400  # messages sent per tick at most; under a flood the page shows the latest
CONTENT_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                  "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")

Numbers = Callable[[], Awaitable[dict[str, Any]]]
"""Gathers the numbers table (and colours the map's peers by quota); raises CommandError if it cannot."""


@dataclass
class WebSession:
    """Everything the server serves from: the bus, what the monitor saw, and the token."""

    bus: BusConnection
    picture: BusPicture
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    monitoring: str = ""
    """Empty while the monitor sees the bus's traffic; otherwise why it cannot (shown on the page)."""
    numbers: Numbers | None = None
    sockets: set[web.WebSocketResponse] = field(default_factory=set)
    latest_numbers: dict[str, Any] = field(default_factory=dict)

    def allowed(self, request: web.Request) -> bool:
        given = request.query.get("token") or request.headers.get("X-Busd-Token") or ""
        return secrets.compare_digest(given.encode(), self.token.encode())

    def hello(self) -> dict[str, Any]:
        return {"type": "hello", "bus": self.bus.choice.described, "address": self.bus.choice.address,
                "monitoring": self.monitoring, "own": sorted(self.picture.own), "window": self.picture.window,
                "version": __version__,
                "messages": [r.to_json() for r in self.picture.recent(BACKLOG)], **self.picture.map()}


SESSION = web.AppKey("session", WebSession)


@web.middleware
async def _guard(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                 ) -> web.StreamResponse:
    """Refuse any request without the token; set headers that keep the page to itself."""
    if not request.app[SESSION].allowed(request):
        return web.Response(status=403, text="Forbidden: open the URL that 'busdctl web' printed, with its token.\n")
    response = await handler(request)
    response.headers["Content-Security-Policy"] = CONTENT_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-store"
    return response


async def _index(request: web.Request) -> web.Response:
    html = (STATIC / "index.html").read_text(encoding="utf-8")
    return web.Response(text=html.replace(TOKEN_PLACEHOLDER, request.app[SESSION].token), content_type="text/html")


async def _asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in ASSETS:
        raise web.HTTPNotFound()
    return web.Response(body=(STATIC / name).read_bytes(), content_type=ASSETS[name], charset="utf-8")


async def _events(request: web.Request) -> web.WebSocketResponse:
    session = request.app[SESSION]
    socket = web.WebSocketResponse(heartbeat=30)
    await socket.prepare(request)
    await socket.send_json(session.hello())
    if session.latest_numbers:
        await socket.send_json(session.latest_numbers)
    session.sockets.add(socket)
    try:
        async for message in socket:
            if message.type == WSMsgType.ERROR:
                break
    finally:
        session.sockets.discard(socket)
    return socket


def _answer(data: Any) -> web.Response:
    return web.json_response({"ok": True, **data})


def _failure(error: CommandError) -> web.Response:
    """A failed bus call as the page shows it: the D-Bus error name and text, or busdctl's message."""
    if isinstance(error, BusError):
        return web.json_response({"ok": False, "error": error.error_name, "message": error.text,
                                  "hint": error.hint or ""})
    kind = "usage" if isinstance(error, UsageError) else "failed"
    return web.json_response({"ok": False, "error": kind, "message": str(error), "hint": ""})


def _arguments(request: web.Request, *names: str) -> list[str]:
    missing = [name for name in names if not request.query.get(name)]
    if missing:
        raise web.HTTPBadRequest(text=f"Missing query parameter(s): {', '.join(missing)}.\n")
    return [request.query[name] for name in names]


async def _services(request: web.Request) -> web.Response:
    try:
        return _answer(await list_services(request.app[SESSION].bus))
    except CommandError as error:
        return _failure(error)


async def _tree(request: web.Request) -> web.Response:
    [service] = _arguments(request, "service")
    try:
        return _answer(await object_tree(request.app[SESSION].bus, service))
    except CommandError as error:
        return _failure(error)


async def _object(request: web.Request) -> web.Response:
    service, path = _arguments(request, "service", "path")
    try:
        return _answer(await describe(request.app[SESSION].bus, service, path))
    except CommandError as error:
        return _failure(error)


async def _property(request: web.Request) -> web.Response:
    service, path, interface, name = _arguments(request, "service", "path", "interface", "name")
    try:
        return _answer(await read_property(request.app[SESSION].bus, service, path, interface, name))
    except CommandError as error:
        return _failure(error)


async def _call(request: web.Request) -> web.Response:
    try:
        form = await request.json()
        fields = [str(form.get(key) or "") for key in ("service", "path", "interface", "member", "signature",
                                                         "arguments")]
    except (ValueError, AttributeError):
        raise web.HTTPBadRequest(text="Send the call as a JSON object.\n") from None
    if not all(fields[:2]) or not fields[3]:
        raise web.HTTPBadRequest(text="A call needs service, path and member.\n")
    try:
        return _answer(await call_method(request.app[SESSION].bus, *fields))
    except CommandError as error:
        return _failure(error)


async def _numbers(request: web.Request) -> web.Response:
    session = request.app[SESSION]
    if session.numbers is None:
        return _answer({"available": False, "reason": "this busdctl has no numbers to show"})
    try:
        return _answer(await session.numbers())
    except CommandError as error:
        return _failure(error)


async def _capture(request: web.Request) -> web.Response:
    session = request.app[SESSION]
    words = request.query.get("filter", "").split()
    data = session.picture.pcapng(words, f"busdctl {__version__} web", f"{platform.system()} {platform.release()}",
                                  session.bus.choice.address)
    return web.Response(body=data, content_type="application/x-pcapng",
                        headers={"Content-Disposition": 'attachment; filename="bus.pcapng"'})


async def _tick(session: WebSession) -> None:
    """Every TICK: peers new to the map get looked up, and every page gets the map and new messages."""
    lookups: asyncio.Task[None] | None = None
    while True:
        await asyncio.sleep(TICK)
        if session.picture.new_peers and (lookups is None or lookups.done()):
            lookups = asyncio.ensure_future(look_up_new_peers(session.bus, session.picture))
        messages = session.picture.take_new()
        if not session.sockets:
            continue
        update = {"type": "tick", "monitoring": session.monitoring, "dropped": max(0, len(messages) - MAX_PER_TICK),
                  "messages": [r.to_json() for r in messages[-MAX_PER_TICK:]], **session.picture.map()}
        await _send_all(session, update)


async def _refresh_numbers(session: WebSession, every: float) -> None:
    """The numbers (and the map's quota colours and bridge stand-ins) every `every` seconds, while a page is open."""
    while True:
        if session.sockets:
            await mark_stand_ins(session.bus, session.picture)
        if session.sockets and session.numbers is not None:
            try:
                session.latest_numbers = {"type": "numbers", **await session.numbers()}
            except Exception as error:  # noqa: BLE001 - shown on the page, which keeps its other views
                session.latest_numbers = {"type": "numbers", "available": False, "reason": str(error)}
            await _send_all(session, session.latest_numbers)
        await asyncio.sleep(every)


async def _send_all(session: WebSession, data: dict[str, Any]) -> None:
    for socket in list(session.sockets):
        if socket.closed:
            session.sockets.discard(socket)
            continue
        with contextlib.suppress(ConnectionError, RuntimeError):
            await socket.send_json(data)


def make_app(session: WebSession) -> web.Application:
    app = web.Application(middlewares=[_guard], client_max_size=1024 * 1024)
    app[SESSION] = session
    app.router.add_get("/", _index)
    app.router.add_get("/static/{name}", _asset)
    app.router.add_get("/events", _events)
    app.router.add_get("/api/services", _services)
    app.router.add_get("/api/tree", _tree)
    app.router.add_get("/api/object", _object)
    app.router.add_get("/api/property", _property)
    app.router.add_post("/api/call", _call)
    app.router.add_get("/api/numbers", _numbers)
    app.router.add_get("/capture.pcapng", _capture)
    return app


@dataclass
class Served:
    """A running server: its URL (token included) and how to stop it."""

    url: str
    runner: web.AppRunner
    tasks: list[asyncio.Task[None]]
    session: WebSession

    async def stop(self) -> None:
        """Stop the ticker, tell open pages we are going (else the server would wait for them), stop serving."""
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await asyncio.gather(*(socket.close(code=WSCloseCode.GOING_AWAY, message=b"busdctl web stopped")
                               for socket in list(self.session.sockets)), return_exceptions=True)
        await self.runner.cleanup()


async def serve(session: WebSession, host: str, port: int, numbers_every: float = 2.0) -> Served:
    """Listen on host:port (port 0: any free one) and start the ticker; raises OSError if it cannot listen."""
    runner = web.AppRunner(make_app(session), access_log=None, handle_signals=False, shutdown_timeout=STOP_TIMEOUT)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound_port = runner.addresses[0][1] if runner.addresses else port
    shown_host = f"[{host}]" if ":" in host else host
    url = f"http://{shown_host}:{bound_port}/?token={session.token}"
    tasks = [asyncio.ensure_future(_tick(session)), asyncio.ensure_future(_refresh_numbers(session, numbers_every))]
    return Served(url, runner, tasks, session)

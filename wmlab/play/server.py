"""`wmlab play RUN_DIR`: a local server for the play page (starlette + uvicorn + websockets).

    GET  /                    the page (static/index.html)
    GET  /static/...          its script and style, from the package's static folder only
    GET  /api/info            what the page is told at start (model, sizes, keys, knobs)
    GET  /recordings/NAME     a recording written to RUN_DIR/play/ by this server
    WS   /ws                  one player: JSON messages in, frames out (see session.py)

Each websocket is one player with its own dream and real environment; the model's weights are
shared and its calls serialised. The page asks for the next frame when it has drawn the last one,
so the dream runs at the model's own pace (or at the game speed the player picks) and never
queues up. A connection that sends messages faster than frames come back (more than
`MAX_PENDING` waiting), or keeps sending malformed ones, is told why and closed (code 1008);
one that sends a message bigger than an upload may be is closed by the websocket layer (1009).
Other players are served meanwhile. The server writes only recordings, and only to RUN_DIR/play/.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import tyro

from wmlab.core.errors import WmlabError
from wmlab.play.session import (
    MAX_UPLOAD_CHARACTERS,
    RECORDING_NAME,
    RECORDINGS_FOLDER,
    Playable,
    PlaySession,
    ProtocolError,
    load_playable,
    parse_message,
)

STATIC = Path(__file__).parent / "static"
#: Messages that may wait for the model; a well-behaved page has at most one step in flight.
MAX_PENDING = 8
#: Messages over MAX_PENDING, or malformed ones, tolerated before the connection is closed.
MAX_STRIKES = 32
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
#: uvicorn's implementation on the `websockets` package (its sans-I/O one, the one it keeps).
WEBSOCKETS = "websockets-sansio"
SECURITY_HEADERS = {
    # Nothing but this server: no network at run time, no inline script.
    "Content-Security-Policy": "default-src 'self'; connect-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


def missing_dependencies() -> str | None:
    """None when the server's packages are installed, else the install command."""
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
        import websockets  # noqa: F401
    except ImportError as error:
        return f"wmlab play needs the {error.name!r} package: pip install 'wmlab[play]'"
    return None


# ----------------------------------------------------------------------------------------------
# The application


def create_app(playable: Playable, seed: int = 0, max_sessions: int = 8, max_dream_steps: int = 100_000):
    """The starlette application serving `playable` to at most `max_sessions` players at once."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import (
        FileResponse,
        JSONResponse,
        PlainTextResponse,
        Response,
    )
    from starlette.routing import Mount, Route, WebSocketRoute
    from starlette.staticfiles import StaticFiles
    from starlette.websockets import WebSocket, WebSocketDisconnect

    players = {"count": 0}

    async def index(request) -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html", headers=SECURITY_HEADERS)

    async def no_icon(request) -> Response:
        return Response(status_code=204)

    async def info(request) -> Response:
        return JSONResponse(playable.describe(), headers=SECURITY_HEADERS)

    async def recording(request) -> Response:
        name = request.path_params["name"]
        folder = (playable.run_dir / RECORDINGS_FOLDER).resolve()
        path = (folder / name).resolve()
        if not RECORDING_NAME.match(name) or path.parent != folder or not path.is_file():
            return PlainTextResponse("no such recording", status_code=404)
        media = "image/gif" if name.endswith(".gif") else "video/mp4"
        return FileResponse(path, media_type=media, filename=name, headers=SECURITY_HEADERS)

    async def play_socket(websocket: WebSocket) -> None:
        if not _same_origin(websocket.headers):
            await websocket.close(code=1008, reason="cross-origin connections are refused")
            return
        if players["count"] >= max_sessions:
            await websocket.close(code=1013, reason=f"{max_sessions} players already: try again later")
            return
        await websocket.accept()
        players["count"] += 1
        session = PlaySession(playable, seed=seed, max_dream_steps=max_dream_steps)
        send_lock = asyncio.Lock()
        pending: asyncio.Queue = asyncio.Queue(maxsize=MAX_PENDING)
        strikes = 0

        async def send(message: dict) -> None:
            async with send_lock:
                await websocket.send_text(json.dumps(message))

        async def work() -> None:
            while True:
                command = await pending.get()
                try:
                    reply = await run_in_threadpool(_handle, session, command)
                except ProtocolError as error:
                    reply = {"type": "error", "message": str(error), "request": command["type"]}
                except Exception as error:  # noqa: BLE001 - the model or environment failed: say so, keep serving
                    traceback.print_exc()
                    reply = {
                        "type": "error",
                        "message": f"{command['type']} failed: {type(error).__name__}: {error}",
                        "request": command["type"],
                    }
                await send(reply)

        worker = None
        try:
            await send({"type": "hello", **playable.describe()})
            await send((await run_in_threadpool(session.reset)).message(0))
            worker = asyncio.create_task(work())
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                text = message.get("text")
                try:
                    if text is None:
                        raise ProtocolError("send JSON text messages, not binary ones")
                    command = parse_message(text, playable)
                    pending.put_nowait(command)
                    continue
                except ProtocolError as error:
                    reason = str(error)
                except asyncio.QueueFull:
                    reason = f"too many messages: more than {MAX_PENDING} are waiting for the model; ask for a frame when the last one has arrived"
                strikes += 1
                await send({"type": "error", "message": reason})
                if strikes > MAX_STRIKES:
                    await websocket.close(code=1008, reason="too many bad or excess messages")
                    break
        except WebSocketDisconnect:
            pass
        finally:
            if worker is not None:
                worker.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await worker
            players["count"] -= 1
            await run_in_threadpool(session.close)

    routes = [
        Route("/", index),
        Route("/api/info", info),
        Route("/favicon.ico", no_icon),
        Route("/recordings/{name}", recording),
        Mount("/static", app=StaticFiles(directory=STATIC, follow_symlink=False), name="static"),
        WebSocketRoute("/ws", play_socket),
    ]
    return Starlette(routes=routes)


def _handle(session: PlaySession, command: dict) -> dict:
    """Carry out one checked command (in a worker thread) -> the reply message."""
    kind = command["type"]
    if kind == "step":
        return session.step(command["action"]).message(command["seq"])
    if kind == "reset":
        return session.reset(command["seed"]).message(0)
    if kind == "dream_from_real":
        return session.dream_from_real().message(0)
    if kind == "image":
        return session.start_from_image(command["bytes"]).message(0)
    if kind == "settings":
        settings = {key: value for key, value in command.items() if key != "type"}
        frame = session.settings(**settings)
        return frame.message(0) if frame is not None else {"type": "settings", **settings}
    if kind == "record":
        if command["on"]:
            session.start_recording()
            return {"type": "recording", "on": True}
        path = session.stop_recording(command["format"])
        return {"type": "recording", "on": False, "url": f"/recordings/{path.name}", "name": path.name}
    raise ProtocolError(f"unknown command {kind!r}")


def _same_origin(headers: Any) -> bool:
    """A browser page from another site may not drive the model (no Origin: not a browser)."""
    origin = headers.get("origin")
    if origin is None:
        return True

    return urlsplit(origin).netloc == headers.get("host")


# ----------------------------------------------------------------------------------------------
# Serving


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on (host, port); port 0 picks a free one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as error:
        listener.close()
        raise WmlabError(f"cannot listen on {host}:{port} ({error.strerror}); pick another --port") from None
    listener.listen(64)
    listener.setblocking(False)
    return listener


def address(listener: socket.socket) -> str:
    """The address to open; a server on every interface is opened through the loopback."""
    host, port = listener.getsockname()[:2]
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def uvicorn_server(app, log_level: str = "warning"):
    import uvicorn

    config = uvicorn.Config(
        app, log_level=log_level, ws_max_size=MAX_UPLOAD_CHARACTERS + 4096, ws=WEBSOCKETS, lifespan="off"
    )
    return uvicorn.Server(config)


class BackgroundServer:
    """The server in a thread, for tests and measurements: `with BackgroundServer(app) as url:`."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0):
        self.listener = bind(host, port)
        self.url = address(self.listener)
        self.server = uvicorn_server(app)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.listener]}, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        for _ in range(500):
            if self.server.started:
                break
            time.sleep(0.01)
        return self.url

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.listener.close()


# ----------------------------------------------------------------------------------------------
# The command


@dataclass(frozen=True)
class PlayCommand:
    """Play inside a run's world model in the browser: a local server and the address to open."""

    run_dir: tyro.conf.Positional[Path]
    """The run directory (it holds config.json and checkpoints/)."""
    port: int = 8765
    """Port to listen on (0: any free port)."""
    host: str = "127.0.0.1"
    """Address to listen on; anything but this machine's loopback lets other machines play."""
    seed: int = 0
    """Seed of the real episodes (episode i uses seed + i) and of the dream's sampling."""
    threads: int = 0
    """Torch CPU threads (0: torch's default)."""
    max_players: int = 4
    """Players (browser tabs) served at once."""


def play_command(argv: list[str]) -> int:
    missing = missing_dependencies()
    if missing:
        raise WmlabError(missing)
    arguments = tyro.cli(PlayCommand, args=argv, prog="wmlab play")
    import torch

    if arguments.threads > 0:
        torch.set_num_threads(arguments.threads)
    playable = load_playable(arguments.run_dir)
    app = create_app(playable, seed=arguments.seed, max_sessions=arguments.max_players)
    listener = bind(arguments.host, arguments.port)
    if arguments.host not in LOCAL_HOSTS:
        print(
            f"wmlab play: listening on {arguments.host}, not only on this machine: anyone who can reach it on port "
            f"{listener.getsockname()[1]} can play this model (there is no login)",
            file=sys.stderr,
        )
    print(
        f"wmlab play: {playable.family} world model of {arguments.run_dir} ({playable.algorithm} on {playable.env_id})"
    )
    print(f"open {address(listener)} in a browser (Ctrl-C stops)", flush=True)
    server = uvicorn_server(app)
    with contextlib.suppress(KeyboardInterrupt):
        server.run(sockets=[listener])
    return 0

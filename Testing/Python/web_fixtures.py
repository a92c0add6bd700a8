"""Helpers of the web tests: a ``collagan-impute web`` process on a free port, and a plain WebSocket client that
speaks the page's protocol (wslink: msgpack messages in chunks) from 127.0.0.1, bounded in messages and time."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Optional

import pytest

CHROMIUM = os.environ.get("COLLAGAN_CHROMIUM", "/usr/bin/chromium")


def chromium_path() -> Optional[str]:
    """Debian's Chromium (or ``COLLAGAN_CHROMIUM``), or the one on PATH; None when there is none."""
    return CHROMIUM if Path(CHROMIUM).is_file() else shutil.which("chromium")


def require(condition: bool, why: str) -> None:
    """Skip (the whole calling module when called at its import) unless ``condition``; under CI an error."""
    if condition:
        return
    if os.environ.get("CI"):
        raise RuntimeError(f"The browser tests must run in CI: {why}")
    pytest.skip(why, allow_module_level=True)


def require_browser() -> None:
    """Chromium, Playwright and the web extra, or skip (an error in CI)."""
    require(chromium_path() is not None, f"Chromium not found at {CHROMIUM} (apt-get install -y chromium)")
    try:
        import playwright.sync_api  # noqa: F401
        import trame_slicer  # noqa: F401
    except ImportError as error:
        require(False, f"the web extra and Playwright are needed (pip install -e '.[web]' playwright): {error}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A ``collagan-impute web`` process on a free port; its output goes to a file (a full pipe would block it)."""

    def __init__(self, log: Path, *extra: str, threads: int = 1) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.origin = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.process = subprocess.Popen(
            [sys.executable, "-m", "CollaGANImputeLib", "web", "--port", str(self.port), "--device", "cpu",
             "--precision", "fp32", "--threads", str(threads), *extra], stdout=log.open("wb"), stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONUNBUFFERED="1"))

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"The web server exited: {self.output()}")
            if "Uploads are kept in" in self.output():  # printed just before the port is bound: retry until it is
                try:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=5):
                        return
                except OSError:
                    pass
            time.sleep(1)
        self.process.kill()
        raise RuntimeError(f"The web server did not start within {timeout} s: {self.output()}")

    def upload_dir(self) -> Path:
        return Path(re.search(r"Uploads are kept in (\S+) ", self.output()).group(1))

    def rss_mb(self) -> float:
        text = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+)", text).group(1)) / 1024

    def secret(self) -> str:
        """The per-server secret, asked for as the served page does."""
        request = urllib.request.Request(f"{self.url}paraview/", data=b"{}", method="POST",
                                         headers={"Origin": self.origin, "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())["secret"]

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait()


class WsClient:
    """A wslink client on its own event loop in its own thread (Playwright's sync API holds the main thread's):
    ``hello`` with a secret, RPC calls, and everything the server sends.

    ``received`` holds each complete message (decoded); ``raw`` every byte received, to search for leaked data.
    """

    def __init__(self, url: str, origin: Optional[str]) -> None:
        self.url, self.origin = url, origin
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.received: list = []
        self.raw = bytearray()
        self.status: Optional[int] = None
        self._ws = self._session = None
        self._count = 0

    def run(self, coroutine, timeout: float = 60):
        return asyncio.run_coroutine_threadsafe(asyncio.wait_for(coroutine, timeout), self.loop).result(timeout + 5)

    async def _connect(self) -> None:
        import aiohttp

        self._session = aiohttp.ClientSession()
        headers = {"Origin": self.origin} if self.origin else {}
        try:
            self._ws = await self._session.ws_connect(self.url, headers=headers, max_msg_size=0)
        except aiohttp.WSServerHandshakeError as error:
            self.status = error.status
            await self._session.close()
            raise

    def connect(self) -> WsClient:
        self.run(self._connect())
        return self

    async def _send(self, method: str, args: list, system: bool = False) -> str:
        import msgpack
        from wslink.chunking import generate_chunks

        self._count += 1
        rpcid = "system:c0:0" if system else f"rpc:c0:{self._count}"
        message = msgpack.packb({"wslink": "1.0", "id": rpcid, "method": method, "args": args, "kwargs": {}})
        for chunk in generate_chunks(message, 4 * 1024 * 1024):
            await self._ws.send_bytes(chunk)
        return rpcid

    async def _receive_until(self, rpcid: Optional[str], seconds: float, max_messages: int):
        import aiohttp
        from wslink.chunking import UnChunker

        unchunker = UnChunker()
        unchunker.set_max_message_size(1 << 30)
        deadline = self.loop.time() + seconds
        while len(self.received) < max_messages:
            left = deadline - self.loop.time()
            if left <= 0:
                return None
            try:
                frame = await self._ws.receive(timeout=left)
            except asyncio.TimeoutError:
                return None
            if frame.type != aiohttp.WSMsgType.BINARY:
                return None
            self.raw += frame.data
            message = unchunker.process_chunk(frame.data)
            if message is not None:
                self.received.append(message)
                if rpcid and message.get("id") == rpcid:
                    return message
        return None

    def hello(self, secret: str) -> dict:
        async def go():
            rpcid = await self._send("wslink.hello", [{"secret": secret}], system=True)
            return await self._receive_until(rpcid, 20, 1000)

        return self.run(go())

    def call(self, method: str, *args, wait: float = 20) -> Optional[dict]:
        async def go():
            rpcid = await self._send(method, list(args))
            return await self._receive_until(rpcid, wait, 1000)

        return self.run(go(), timeout=wait + 10)

    def listen(self, seconds: float, max_messages: int = 1000) -> None:
        self.run(self._receive_until(None, seconds, max_messages), timeout=seconds + 10)

    def published(self, topic: str = "trame.state.topic") -> list:
        return [m.get("result") for m in self.received if str(m.get("id", "")).startswith(f"publish:{topic}")]

    def close(self) -> None:
        async def go():
            if self._ws is not None:
                await self._ws.close()
            if self._session is not None:
                await self._session.close()

        self.run(go())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

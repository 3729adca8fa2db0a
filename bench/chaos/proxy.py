"""A TCP proxy in front of the broker that can cut or blackhole the workers' connections.

The broker advertises the proxy's address, so every Kafka connection (bootstrap, partition
leader, group coordinator) passes through here. A connection is classified by the `client_id`
of its first request (request headers v1+ always carry it as an int16-length string): only
connections whose client id starts with `target_prefix` (the workers') are faulted, so the
harness keeps producing and measuring while the workers lose the broker.

Modes:
- `pass`: forward both ways;
- `cut`: close every target connection and close new ones as soon as they are classified
  (the broker went away);
- `blackhole`: hold every byte in both directions on target connections, old and new, without
  closing them (a partition that drops packets); on `pass` the held bytes flow again, as TCP
  retransmission would deliver them after a partition heals.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Literal

log = logging.getLogger(__name__)

Mode = Literal["pass", "cut", "blackhole"]
HEADER_PREFIX = struct.Struct(">ihhih")  # size, api key, api version, correlation id, client id length


def parse_client_id(buf: bytes) -> str | None:
    """The client id of the first Kafka request in `buf`, or None while more bytes are needed.

    Returns "" for a request without one (a null client id)."""
    if len(buf) < HEADER_PREFIX.size:
        return None
    _, _, _, _, length = HEADER_PREFIX.unpack_from(buf)
    if length < 0:
        return ""
    end = HEADER_PREFIX.size + length
    if len(buf) < end:
        return None
    return buf[HEADER_PREFIX.size : end].decode("utf-8", errors="replace")


@dataclass(eq=False)
class _Conn:
    client_w: asyncio.StreamWriter
    upstream_w: asyncio.StreamWriter | None = None
    targeted: bool = False
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def close(self) -> None:
        for w in (self.client_w, self.upstream_w):
            if w is not None:
                with contextlib.suppress(Exception):
                    w.transport.abort()
        for t in self.tasks:
            t.cancel()


class FaultProxy:
    """Listen on 127.0.0.1:`listen_port`, forward to `upstream`; runs its own event loop thread."""

    def __init__(self, listen_port: int, upstream: tuple[str, int], target_prefix: str) -> None:
        self.listen_port, self.upstream, self.target_prefix = listen_port, upstream, target_prefix
        self.mode: Mode = "pass"
        self.counts = {"accepted": 0, "targeted": 0, "cut": 0}
        self._conns: set[_Conn] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="chaos-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._flowing: asyncio.Event | None = None

    # -- control (any thread) ---------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()
        self._call(self._start())

    def set_mode(self, mode: Mode) -> None:
        self._call(self._set_mode(mode))
        log.info("proxy mode: %s", mode)

    def close(self) -> None:
        if self._thread.is_alive():
            self._call(self._close())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
        self._loop.close()

    def _call(self, coro: Coroutine[Any, Any, None]) -> None:
        fut: Future[None] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        fut.result(timeout=10)

    # -- event loop side ----------------------------------------------------------------------
    async def _start(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.listen_port, reuse_address=True)

    async def _set_mode(self, mode: Mode) -> None:
        assert self._flowing is not None
        self.mode = mode
        if mode == "blackhole":
            self._flowing.clear()
        else:
            self._flowing.set()
        if mode == "cut":
            for conn in [c for c in self._conns if c.targeted]:
                self.counts["cut"] += 1
                conn.close()
                self._conns.discard(conn)

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self._conns):
            conn.close()
        self._conns.clear()
        assert self._flowing is not None
        self._flowing.set()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.counts["accepted"] += 1
        conn = _Conn(client_w)
        self._conns.add(conn)
        try:
            first = b""
            client_id: str | None = None
            while client_id is None:
                chunk = await client_r.read(65_536)
                if not chunk:
                    return
                first += chunk
                client_id = parse_client_id(first)
            conn.targeted = client_id.startswith(self.target_prefix)
            if conn.targeted:
                self.counts["targeted"] += 1
                if self.mode == "cut":
                    self.counts["cut"] += 1
                    return
            up_r, up_w = await asyncio.open_connection(*self.upstream)
            conn.upstream_w = up_w
            pumps = [
                asyncio.ensure_future(self._pump(conn, client_r, up_w, first)),
                asyncio.ensure_future(self._pump(conn, up_r, client_w, b"")),
            ]
            conn.tasks.extend(pumps)
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            conn.close()
            self._conns.discard(conn)

    async def _pump(
        self, conn: _Conn, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pending: bytes
    ) -> None:
        assert self._flowing is not None
        try:
            while True:
                if conn.targeted and not self._flowing.is_set():
                    await self._flowing.wait()  # blackholed: hold the bytes, keep the socket open
                if pending:
                    writer.write(pending)
                    await writer.drain()
                pending = await reader.read(65_536)
                if not pending:
                    return
        except (OSError, asyncio.CancelledError):
            return

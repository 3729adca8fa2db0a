"""The real processes a scenario runs against, and the instruments that watch them.

- `Stack`: a Tansu broker behind a `FaultProxy` (the broker advertises the proxy), and our own
  `redis-server` on a free port (so it can be stopped and frozen; the system Redis is never touched);
- `Fleet`: `tagger worker` processes (`python -m worker.cli worker`, settings as `TAGGER_*`),
  supervised like a Deployment would be: a worker that exits without being told to is counted
  as a crash and restarted;
- `Stream`: a paced producer of valid product events (real Flipkart titles) that records where
  every acknowledged record landed, so produced end offsets are exact (Tansu's ListOffsets
  LATEST is wrong);
- `Collector`: reads the tag and dead-letter topics from the beginning, continuously;
- `committed()`: the group's committed offsets (OffsetFetch through the admin client).

Every client of the harness uses a `chaos-harness-*` client id, which the proxy never faults.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.chaos.accounting import DeadOut, Sent, TagOut
from bench.chaos.proxy import FaultProxy
from scripts.local_services import create_topics, free_port, redis_answers, tansu_binary

log = logging.getLogger(__name__)

WORKER_CLIENT_PREFIX = "chaos-worker"
HARNESS_CLIENT = "chaos-harness"
PARTITIONS = 4
MAX_VALUE_BYTES = 8 * 1_048_576


def _wait_port(port: int, timeout_s: float) -> bool:
    import socket

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
        time.sleep(0.05)
    return False


def _stop_proc(proc: subprocess.Popen[bytes] | None, timeout_s: float = 10) -> None:
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGCONT)  # a frozen process cannot act on SIGTERM
        proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


# -- Redis we own --------------------------------------------------------------------------------


class RedisServer:
    """A throwaway `redis-server` on a fixed free port: stop/start keeps the port, freeze is SIGSTOP."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("no redis-server binary (apt-get install redis-server)")
        self.binary, self.workdir = binary, workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.frozen = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        args += ["--dir", str(self.workdir), "--logfile", str(self.workdir / "redis.log")]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if redis_answers(self.url):
                return
            time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start on {self.port}")

    def stop(self) -> None:
        _stop_proc(self.proc)
        self.proc, self.frozen = None, False

    def freeze(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        if self.proc is not None and self.frozen:
            self.proc.send_signal(signal.SIGCONT)
        self.frozen = False

    def client(self) -> Any:
        import redis

        return redis.Redis.from_url(self.url, socket_timeout=5, socket_connect_timeout=2)


# -- broker + proxy ------------------------------------------------------------------------------


class Stack:
    """Tansu (listening on its own port, advertising the proxy's) + proxy + our Redis."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.broker_proc: subprocess.Popen[bytes] | None = None
        self.proxy: FaultProxy | None = None
        self.redis = RedisServer(workdir)
        self.bootstrap = ""

    def start(self) -> None:
        self.redis.start()
        for _ in range(5):  # a just-released port can fail with "Address in use"
            broker_port, proxy_port = free_port(), free_port()
            out = (self.workdir / "tansu.log").open("ab")
            self.broker_proc = subprocess.Popen(
                [
                    str(tansu_binary()), "broker",
                    "--listener-url", f"tcp://127.0.0.1:{broker_port}",
                    "--advertised-listener-url", f"tcp://127.0.0.1:{proxy_port}",
                ],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
            out.close()
            if _wait_port(broker_port, 10) and self.broker_proc.poll() is None:
                break
            _stop_proc(self.broker_proc)
        else:
            raise RuntimeError("could not start tansu")
        self.proxy = FaultProxy(proxy_port, ("127.0.0.1", broker_port), WORKER_CLIENT_PREFIX)
        self.proxy.start()
        self.bootstrap = f"127.0.0.1:{proxy_port}"
        log.info("tansu on %d behind proxy %s; redis %s", broker_port, self.bootstrap, self.redis.url)

    def close(self) -> None:
        if self.proxy is not None:
            with contextlib.suppress(Exception):
                self.proxy.close()
        _stop_proc(self.broker_proc)
        self.redis.thaw()
        self.redis.stop()


# -- workers -------------------------------------------------------------------------------------


def http_get(port: int, path: str, timeout_s: float = 2) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout_s) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


def proc_rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def proc_fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def proc_cpu_s(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


@dataclass
class WorkerSlot:
    """One replica: the current process, whether it should be running, and what happened to it."""

    name: str
    env: dict[str, str]
    log_path: Path
    http_port: int
    proc: subprocess.Popen[bytes] | None = None
    wanted: bool = False
    started_at: float = 0.0
    crashes: list[int] = field(default_factory=list)  # exit codes of exits we did not cause


class Fleet:
    """Worker processes under a small supervisor thread (restart on an exit we did not cause)."""

    def __init__(self, base_env: dict[str, str], worker_root: Path, logdir: Path, restart_delay_s: float = 1.0) -> None:
        self.base_env, self.worker_root, self.logdir = base_env, worker_root, logdir
        self.restart_delay_s = restart_delay_s
        self.slots: dict[str, WorkerSlot] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._supervise, name="chaos-supervisor", daemon=True)
        self._thread.start()

    def _spawn(self, slot: WorkerSlot) -> None:
        with slot.log_path.open("ab") as out:
            slot.proc = subprocess.Popen(
                [sys.executable, "-m", "worker.cli", "worker"],
                env=slot.env,
                cwd=self.worker_root,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        slot.started_at = time.monotonic()

    def configure(self, name: str, **extra_env: str) -> WorkerSlot:
        """Create the replica's slot (its env, log and HTTP port) without starting it."""
        with self._lock:
            slot = self.slots.get(name)
            if slot is None:
                port = free_port()
                env = dict(self.base_env)
                env.update(
                    {"TAGGER_KAFKA__CLIENT_ID": f"{WORKER_CLIENT_PREFIX}-{name}", "TAGGER_HTTP__PORT": str(port)}
                )
                slot = WorkerSlot(name, env, self.logdir / f"worker-{name}.log", port)
                self.slots[name] = slot
            slot.env.update(extra_env)
            return slot

    def start(self, name: str, **extra_env: str) -> WorkerSlot:
        slot = self.configure(name, **extra_env)
        with self._lock:
            slot.wanted = True
            if slot.proc is None or slot.proc.poll() is not None:
                self._spawn(slot)
            return slot

    def kill(self, name: str, restart: bool = True) -> None:
        """SIGKILL; with `restart`, start a replacement at once (what a Deployment does; not a crash)."""
        with self._lock:
            slot = self.slots[name]
            slot.wanted = slot.wanted and restart
            if slot.proc is not None and slot.proc.poll() is None:
                slot.proc.kill()
                slot.proc.wait(timeout=30)
            if slot.wanted:
                self._spawn(slot)

    def signal(self, name: str, sig: int) -> None:
        with self._lock:
            slot = self.slots[name]
            if slot.proc is not None and slot.proc.poll() is None:
                slot.proc.send_signal(sig)

    def stop(self, name: str, timeout_s: float = 60) -> tuple[int | None, float]:
        """SIGTERM and wait; returns (exit code, seconds to exit). SIGKILL after `timeout_s`."""
        with self._lock:
            slot = self.slots[name]
            slot.wanted = False
            proc = slot.proc
        if proc is None or proc.poll() is not None:
            return (None if proc is None else proc.returncode), 0.0
        t = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            code: int | None = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
            code = None  # killed at the grace period
        return code, time.monotonic() - t

    def _supervise(self) -> None:
        while not self._stop.wait(0.2):
            with self._lock:
                for slot in self.slots.values():
                    if not slot.wanted:
                        continue
                    if slot.proc is None:
                        self._spawn(slot)
                        continue
                    code = slot.proc.poll()
                    if code is not None:
                        slot.crashes.append(code)
                        log.warning("worker %s exited on its own with code %s; restarting", slot.name, code)
                        time.sleep(self.restart_delay_s)
                        self._spawn(slot)

    def running(self) -> list[WorkerSlot]:
        with self._lock:
            return [s for s in self.slots.values() if s.proc is not None and s.proc.poll() is None]

    def crashes(self) -> list[tuple[str, int]]:
        with self._lock:
            return [(s.name, c) for s in self.slots.values() for c in s.crashes]

    def ready(self, name: str) -> bool:
        slot = self.slots[name]
        with contextlib.suppress(OSError):
            return http_get(slot.http_port, "/readyz", 1)[0] == 200
        return False

    def metric(self, name: str, metric: str) -> float | None:
        slot = self.slots[name]
        try:
            code, body = http_get(slot.http_port, "/metrics", 2)
        except OSError:
            return None
        if code != 200:
            return None
        total, seen = 0.0, False
        for line in body.decode(errors="replace").splitlines():
            if line.startswith(metric) and (len(line) == len(metric) or line[len(metric)] in " {"):
                total += float(line.rsplit(" ", 1)[1])
                seen = True
        return total if seen else None

    def wait_ready(self, names: Iterable[str], timeout_s: float = 90) -> None:
        deadline = time.monotonic() + timeout_s
        pending = set(names)
        while pending and time.monotonic() < deadline:
            pending = {n for n in pending if not self.ready(n)}
            time.sleep(0.2)
        if pending:
            raise TimeoutError(f"workers not ready after {timeout_s:.0f} s: {sorted(pending)}")

    def log_lines(self, name: str) -> int:
        try:
            with self.slots[name].log_path.open("rb") as fh:
                return sum(1 for _ in fh)
        except OSError:
            return 0

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for name in list(self.slots):
            with contextlib.suppress(Exception):
                self.stop(name, timeout_s=30)


# -- input stream --------------------------------------------------------------------------------


def load_titles(path: Path, limit: int = 20_000) -> list[dict[str, str]]:
    """Distinct (title, description) pairs from a JSONL catalog, file order."""
    out: list[dict[str, str]] = []
    seen: set[str] = set()
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            title = str(row.get("title") or "").strip()
            if not title or title in seen:
                continue
            seen.add(title)
            item = {"title": title}
            if row.get("description"):
                item["description"] = str(row["description"])[:600]
            out.append(item)
            if len(out) >= limit:
                break
    return out


class Stream:
    """Produce valid product events at a steady rate (plus extra records on demand), recording
    where each acknowledged record landed."""

    def __init__(self, bootstrap: str, topic: str, pool: Sequence[dict[str, str]], id_prefix: str, rng: random.Random):
        from kafka import KafkaProducer

        self.topic, self.pool, self.id_prefix, self.rng = topic, pool, id_prefix, rng
        self.producer = KafkaProducer(
            bootstrap_servers=bootstrap,
            client_id=f"{HARNESS_CLIENT}-producer",
            acks="all",
            linger_ms=5,
            batch_size=262_144,
            max_request_size=MAX_VALUE_BYTES,
        )
        self.sent: list[Sent] = []
        self.failed = 0
        self.seq = 0
        self._lock = threading.Lock()
        self._rate = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _record(self, pid: str | None, good: bool) -> Callable[[Any], None]:
        def ok(meta: Any) -> None:
            with self._lock:
                self.sent.append(Sent(meta.partition, meta.offset, pid, good))

        return ok

    def _failed(self, _exc: Any) -> None:
        with self._lock:
            self.failed += 1

    def next_good(self) -> tuple[bytes, bytes, str]:
        self.seq += 1
        pid = f"{self.id_prefix}-{self.seq}"
        product = {"product_id": pid, **self.pool[self.rng.randrange(len(self.pool))]}
        return pid.encode(), json.dumps(product, ensure_ascii=False).encode(), pid

    def send_good(self, n: int, **overrides: str) -> list[str]:
        pids = []
        for _ in range(n):
            key, _, pid = self.next_good()
            product = {"product_id": pid, **self.pool[self.rng.randrange(len(self.pool))], **overrides}
            value = json.dumps(product, ensure_ascii=False).encode()
            fut = self.producer.send(self.topic, key=key, value=value)
            fut.add_callback(self._record(pid, True)).add_errback(self._failed)
            pids.append(pid)
        return pids

    def send_raw(self, key: bytes | None, value: bytes | None, good: bool = False) -> None:
        fut = self.producer.send(self.topic, key=key, value=value)
        fut.add_callback(self._record(None, good)).add_errback(self._failed)

    def flush(self, timeout_s: float = 120) -> None:
        self.producer.flush(timeout=timeout_s)

    def start(self, rate: float) -> None:
        self._rate = rate
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="chaos-stream", daemon=True)
        self._thread.start()

    def set_rate(self, rate: float) -> None:
        self._rate = rate

    def _run(self) -> None:
        started, sent = time.monotonic(), 0
        while not self._stop.is_set():
            due = int((time.monotonic() - started) * self._rate) - sent
            if due > 0:
                self.send_good(due)
                sent += due
            self._stop.wait(0.02)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.flush()

    def end_offsets(self) -> dict[int, int]:
        """Exact end offsets of what this stream has had acknowledged (it is the only producer)."""
        with self._lock:
            ends: dict[int, int] = {p: 0 for p in range(PARTITIONS)}
            for s in self.sent:
                ends[s.partition] = max(ends[s.partition], s.offset + 1)
            return ends

    def snapshot(self) -> list[Sent]:
        with self._lock:
            return list(self.sent)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.producer.close(timeout=10)


# -- outputs -------------------------------------------------------------------------------------


class Collector:
    """Reads the tag and dead-letter topics from offset 0 in a background thread."""

    def __init__(self, bootstrap: str, out_topic: str, dlq_topic: str) -> None:
        from kafka import KafkaConsumer, TopicPartition

        self.out_topic, self.dlq_topic = out_topic, dlq_topic
        self.consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            client_id=f"{HARNESS_CLIENT}-collector",
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_bytes=64 * 1_048_576,
            max_partition_fetch_bytes=16 * 1_048_576,
        )
        tps = [TopicPartition(t, p) for t in (out_topic, dlq_topic) for p in range(PARTITIONS)]
        self.consumer.assign(tps)
        self.consumer.seek_to_beginning(*tps)
        self.tags: list[TagOut] = []
        self.dead: list[DeadOut] = []
        self.unparseable = 0
        self.last_new = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-collector", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                polled = self.consumer.poll(timeout_ms=200)
            except Exception as exc:  # the harness must keep collecting through broker trouble
                log.warning("collector poll: %s", exc)
                self._stop.wait(0.5)
                continue
            tags, dead, bad = [], [], 0
            for tp, msgs in polled.items():
                for m in msgs:
                    try:
                        v = json.loads(m.value)
                        if tp.topic == self.out_topic:
                            tags.append(
                                TagOut(
                                    v["event_id"], v["product_id"], v["content_hash"], v["model_version"],
                                    int(v["source_partition"]), int(v["source_offset"]),
                                )
                            )  # fmt: skip
                        else:
                            dead.append(DeadOut(str(v.get("error_kind") or ""), int(v["partition"]), int(v["offset"])))
                    except (ValueError, KeyError, TypeError):
                        bad += 1
            if tags or dead or bad:
                with self._lock:
                    self.tags.extend(tags)
                    self.dead.extend(dead)
                    self.unparseable += bad
                    self.last_new = time.monotonic()

    def snapshot(self) -> tuple[list[TagOut], list[DeadOut]]:
        with self._lock:
            return list(self.tags), list(self.dead)

    def acknowledged(self) -> set[tuple[int, int]]:
        with self._lock:
            return {(t.partition, t.offset) for t in self.tags} | {(d.partition, d.offset) for d in self.dead}

    def idle_for(self) -> float:
        with self._lock:
            return time.monotonic() - self.last_new

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        with contextlib.suppress(Exception):
            self.consumer.close()


class Offsets:
    """The worker group's committed offsets on the input topic (OffsetFetch via the admin client)."""

    def __init__(self, bootstrap: str, group: str, topic: str) -> None:
        from kafka.admin import KafkaAdminClient

        self.group, self.topic = group, topic
        self.admin = KafkaAdminClient(
            bootstrap_servers=bootstrap, client_id=f"{HARNESS_CLIENT}-admin", request_timeout_ms=10_000
        )

    def committed(self) -> dict[int, int | None]:
        out: dict[int, int | None] = {p: None for p in range(PARTITIONS)}
        try:
            from kafka import TopicPartition

            tps = [TopicPartition(self.topic, p) for p in range(PARTITIONS)]
            offsets = self.admin.list_group_offsets({self.group: tps}).get(self.group, {})
        except Exception as exc:  # measuring must survive a coordinator hiccup
            log.debug("offset fetch: %s", exc)
            return out
        for tp, meta in offsets.items():
            if tp.topic == self.topic and meta.offset >= 0:
                out[tp.partition] = meta.offset
        return out

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.admin.close()


def make_topics(bootstrap: str, names: Sequence[str]) -> None:
    create_topics(bootstrap, {n: PARTITIONS for n in names})


def new_workdir(keep: Path | None) -> Path:
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        return keep
    return Path(tempfile.mkdtemp(prefix="chaos-"))

"""End to end: `tagger worker` as a separate process on a real broker (Tansu) and a real Redis."""

import json
import random
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from schemas.events import DeadLetter, TagEvent
from scripts.local_services import create_topics, free_port, http_ok, wait_until
from scripts.worker_tools import worker_topics
from tests.kafka_helpers import REPO, produce, read_all, served_worker_env, start_worker, values, worker_env
from tests.model_factory import make_rows

MALFORMED = [
    b"not json at all",
    b"\xff\xfe\x00invalid utf-8",
    b'{"product_id": "m-1", "title": "   "}',
    b'{"title": "missing id"}',
    b"[1, 2, 3]",
    json.dumps({"product_id": "m-2", "title": "x" * 5000}).encode(),
    # a number over 4,300 digits: Python's JSON parser raises a plain ValueError (it once crash-looped the worker)
    b'{"product_id": "m-3", "title": "t", "price": ' + b"9" * 5000 + b"}",
]


def _product(i: int, row: dict) -> bytes:
    return json.dumps(
        {"product_id": f"prod-{i}", "title": row["title"], "description": row.get("description"), "price": i}
    ).encode()


def _wait_http(port: int, path: str, timeout_s: float = 60) -> dict:
    wait_until(lambda: http_ok(port, path), timeout_s, f"GET {path} answering 200")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
        return json.loads(resp.read())


@pytest.mark.parametrize("client", ["kafka-python", "confluent"])
def test_sigkill_mid_stream_loses_nothing(
    broker: str, redis_url: str, tiny_model: Path, unique: str, tmp_path: Path, client: str
) -> None:
    create_topics(broker, worker_topics(unique, 4))
    rows = make_rows(3000, seed=11)
    good = [_product(i, r) for i, r in enumerate(rows)]
    stream = good + MALFORMED * 5
    random.Random(1).shuffle(stream)
    env, port = served_worker_env(
        broker,
        redis_url,
        tiny_model,
        unique,
        TAGGER_BATCHING__MAX_ITEMS="32",
        TAGGER_KAFKA__CLIENT=client,
    )
    log = tmp_path / "worker.log"
    worker = start_worker(env, log)
    try:
        assert _wait_http(port, "/readyz")["ready"] is True
        produce(broker, f"in-{unique}", stream[:1500])
        # Kill as soon as some tag events are out: batches are in flight and offsets half-committed.
        read_all(broker, f"out-{unique}", lambda m: len(m) >= 300, timeout_s=60)
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
        produce(broker, f"in-{unique}", stream[1500:])
        worker = start_worker(env, log)
        seen: set[str] = set()
        read = 0

        def all_tagged(msgs: list) -> bool:
            nonlocal read  # read_all passes everything read so far: look at the new messages only
            seen.update(json.loads(m.value)["product_id"] for m in msgs[read:])
            read = len(msgs)
            return len(seen) >= len(good)

        out = read_all(broker, f"out-{unique}", all_tagged, timeout_s=180)
        dlq = read_all(broker, f"dlq-{unique}", lambda m: len(m) >= 5 * len(MALFORMED), timeout_s=60)
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
    events = values(out)
    for m in out[:200]:
        TagEvent.model_validate_json(m.value)  # the wire format is the contract
    for m in dlq:
        DeadLetter.model_validate_json(m.value)
    by_product: dict[str, set[str]] = {}
    for ev in events:
        by_product.setdefault(ev["product_id"], set()).add(ev["event_id"])
    assert set(by_product) == {f"prod-{i}" for i in range(len(good))}, "a valid product has no tag event"
    # Replays after the kill are duplicates with the same id, never a second identity.
    assert all(len(ids) == 1 for ids in by_product.values())
    assert len(events) >= len(good)
    dead = values(dlq)
    kinds = sorted(d["error_kind"] for d in dead)
    dead_records = {(d["partition"], d["offset"]) for d in dead}
    assert len(dead_records) == 5 * len(MALFORMED), "each malformed record has a dead letter"
    assert set(kinds) == {"not_json", "not_utf8", "empty_title", "schema", "not_object", "oversized_field"}
    import base64

    originals = {base64.b64decode(d["value_b64"]) for d in dead}
    assert originals == set(MALFORMED)
    assert "tagger_dead_letters_total" in metrics and 'reason="not_utf8"' in metrics
    text = log.read_text()
    assert "worker stopped" in text


def _tagger_worker(env: dict[str, str], *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", "worker", *flags],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_bad_settings_and_missing_model_fail_at_start(tmp_path: Path) -> None:
    env = worker_env("127.0.0.1:1", "redis://127.0.0.1:1/0", tmp_path / "nope", "x", TAGGER_BATCHING__MAX_ITEMS="-1")
    proc = _tagger_worker(env)
    assert proc.returncode == 2 and "TAGGER_BATCHING__MAX_ITEMS" in proc.stderr
    env.pop("TAGGER_BATCHING__MAX_ITEMS")
    proc = _tagger_worker(env, "--check")
    assert proc.returncode == 2 and "manifest.json" in proc.stderr


def test_check_flag_reports_missing_gpu(tiny_model: Path) -> None:
    env = worker_env("127.0.0.1:1", "redis://127.0.0.1:1/0", tiny_model, "x", TAGGER_MODEL__PROVIDER="cuda")
    proc = _tagger_worker(env, "--check")
    assert proc.returncode == 2 and "CUDAExecutionProvider" in proc.stderr
    env["TAGGER_MODEL__ALLOW_CPU_FALLBACK"] = "true"
    proc = _tagger_worker(env, "--check")
    assert proc.returncode == 0 and "CPUExecutionProvider" in proc.stdout


@pytest.mark.parametrize("client", ["kafka-python", "confluent"])
def test_unreachable_kafka_is_retried_not_fatal(
    redis_url: str, tiny_model: Path, unique: str, tmp_path: Path, client: str
) -> None:
    """The worker starts before its broker exists: alive, not ready, retrying; then it catches up."""
    from scripts.local_services import start_tansu

    kafka_port, http_port = free_port(), free_port()
    bootstrap = f"127.0.0.1:{kafka_port}"
    env = worker_env(
        bootstrap,
        redis_url,
        tiny_model,
        unique,
        TAGGER_HTTP__PORT=str(http_port),
        TAGGER_KAFKA__BOOTSTRAP_TIMEOUT_S="1",
        TAGGER_KAFKA__RETRY_BACKOFF_MAX_S="1",
        TAGGER_KAFKA__CLIENT=client,
    )
    worker = start_worker(env, tmp_path / "worker.log")
    broker = None
    try:
        assert _wait_http(port=http_port, path="/livez")["kafka_ok"] is False
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"http://127.0.0.1:{http_port}/readyz", timeout=2)
        assert err.value.code == 503
        time.sleep(3)
        assert worker.poll() is None, "the worker must keep retrying, not exit"
        broker = start_tansu(port=kafka_port)
        create_topics(bootstrap, worker_topics(unique, 2))
        produce(bootstrap, f"in-{unique}", [_product(i, r) for i, r in enumerate(make_rows(50, seed=2))])
        out = read_all(bootstrap, f"out-{unique}", lambda m: len(m) >= 50, timeout_s=90)
        assert {json.loads(m.value)["product_id"] for m in out} == {f"prod-{i}" for i in range(50)}
        assert _wait_http(http_port, "/readyz")["ready"] is True
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(30)
        finally:
            if worker.poll() is None:
                worker.kill()
            if broker is not None:
                broker.stop()

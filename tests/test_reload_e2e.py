"""Hot reload end to end: a real worker process on the real broker (Tansu) and Redis, with its model
path a `current` symlink flipped while products stream in."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import defaultdict
from pathlib import Path

import pytest

from schemas.events import TagEvent
from scripts.local_services import create_topics, http_ok, wait_until
from tests.kafka_helpers import REPO, produce, read_all, served_worker_env, start_worker, worker_topics
from tests.model_factory import make_rows
from worker.artifact import load_manifest


@pytest.fixture(scope="module")
def second_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another tiny artifact (fewer steps): same labels, different weights, so a different model_version."""
    from tests.model_factory import build_tiny_artifact

    return build_tiny_artifact(tmp_path_factory.mktemp("tiny2"), steps=25)


def _metric(port: int, name: str, **labels: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = rf"^{re.escape(name)}(?:\{{{re.escape(want)}\}})? (\S+)$" if want else rf"^{re.escape(name)} (\S+)$"
    found = re.search(pattern, text, re.M)
    return float(found.group(1)) if found else 0.0


def _flip(link: Path, target: Path) -> None:
    """What a rollout job does: a new symlink renamed over `current` (atomic)."""
    tmp = link.with_name(link.name + ".new")
    tmp.symlink_to(target)
    os.replace(tmp, link)


def test_model_switches_between_batches_while_streaming_and_a_corrupt_artifact_is_refused(
    broker: str, redis_url: str, tiny_model: Path, second_model: Path, unique: str, tmp_path: Path
) -> None:
    # on CPU the worker serves the int8 file, whose version carries the suffix
    v1, v2 = (load_manifest(m).model_version + "-int8" for m in (tiny_model, second_model))
    assert v1 != v2
    models = tmp_path / "models"
    shutil.copytree(tiny_model, models / "a")
    current = models / "current"
    current.symlink_to(models / "a")
    create_topics(broker, worker_topics(unique, 2))
    rows = make_rows(1500, seed=5)
    stream = [json.dumps({"product_id": f"r-{i}", "title": r["title"] + f" {i}"}).encode() for i, r in enumerate(rows)]
    env, port = served_worker_env(
        broker,
        redis_url,
        current,
        unique,
        TAGGER_BATCHING__MAX_ITEMS="16",
        TAGGER_MODEL__RELOAD_INTERVAL_S="0.3",
    )
    log = tmp_path / "worker.log"
    worker = start_worker(env, log)
    started = time.monotonic()
    try:
        wait_until(lambda: http_ok(port, "/readyz"), 60, "worker ready")
        # Products keep arriving, in small chunks, while the artifact is swapped underneath.
        feeding = threading.Thread(
            target=lambda: [produce(broker, f"in-{unique}", stream[i : i + 50]) for i in range(0, 1000, 50)]
        )
        feeding.start()
        wait_until(lambda: _metric(port, "tagger_produced_total") >= 150, 60, "first tag events")
        shutil.copytree(second_model, models / "b")
        _flip(current, models / "b")
        wait_until(lambda: _metric(port, "tagger_model_info", role="live", version=v2) == 1.0, 30, "switch to v2")
        feeding.join(60)

        # A corrupt artifact published the same way: refused, v2 keeps serving.
        shutil.copytree(second_model, models / "c")
        served = models / "c" / "model.int8.onnx"
        data = bytearray(served.read_bytes())
        data[len(data) // 2] ^= 0xFF
        served.write_bytes(bytes(data))
        _flip(current, models / "c")
        wait_until(lambda: _metric(port, "tagger_model_reload_failures_total") >= 1, 30, "corrupt artifact refused")
        produce(broker, f"in-{unique}", stream[1000:])
        wait_until(lambda: _metric(port, "tagger_produced_total") >= len(stream), 60, "everything tagged")
        live_v2 = _metric(port, "tagger_model_info", role="live", version=v2)
        reloads = _metric(port, "tagger_model_reloads_total")
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
    elapsed = time.monotonic() - started
    out = read_all(broker, f"out-{unique}", lambda m: len(m) >= len(stream), timeout_s=30)
    events = [TagEvent.model_validate_json(m.value) for m in out]

    ids: dict[str, set[str]] = defaultdict(set)
    for ev in events:
        ids[ev.product_id].add(ev.event_id)
    assert set(ids) == {f"r-{i}" for i in range(len(stream))}, "a product has no tag event"
    assert all(len(x) == 1 for x in ids.values()), "a product was tagged twice under different identities"
    # Per input partition in consume order: v1 ... v1 then v2 ... v2 (a partition whose first records
    # came after the switch is all v2), never back to v1.
    by_partition: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for ev in events:
        by_partition[ev.source_partition].append((ev.source_offset, ev.model_version))
    for part, seq in by_partition.items():
        versions = [v for _, v in sorted(set(seq))]
        switches = sum(1 for a, b in zip(versions, versions[1:], strict=False) if a != b)
        assert versions[-1] == v2 and switches <= 1, f"partition {part}: {switches} switches"
        assert switches == 0 or versions[0] == v1
    assert {ev.model_version for ev in events} == {v1, v2}
    assert {ev.taxonomy_version for ev in events} == {load_manifest(tiny_model).taxonomy}
    # The corrupt copy never served: the last products were tagged by v2.
    last = [ev for ev in events if int(ev.product_id[2:]) >= 1000]
    assert last and {ev.model_version for ev in last} == {v2}
    assert live_v2 == 1.0 and reloads == 1.0
    text = log.read_text()
    assert "switching at the next batch" in text and "refused, keeping " + v2 in text
    assert elapsed < 90, f"took {elapsed:.0f} s"


def test_shadow_events_reach_only_the_shadow_topic_and_compare_reports_agreement(
    broker: str, redis_url: str, tiny_model: Path, second_model: Path, unique: str, tmp_path: Path
) -> None:
    live_v, shadow_v = (load_manifest(m).model_version + "-int8" for m in (tiny_model, second_model))
    create_topics(broker, worker_topics(unique, 2) | {f"shadow-{unique}": 2})
    rows = make_rows(300, seed=9)
    stream = [json.dumps({"product_id": f"s-{i}", "title": r["title"]}).encode() for i, r in enumerate(rows)]
    env, port = served_worker_env(
        broker,
        redis_url,
        tiny_model,
        unique,
        TAGGER_SHADOW__PATH=str(second_model),
        TAGGER_SHADOW__OUTPUT_TOPIC=f"shadow-{unique}",
        TAGGER_SHADOW__BUDGET_MS="60000",  # this test wants every batch shadowed
    )
    check = subprocess.run(
        [sys.executable, "-m", "worker.cli", "worker", "--check"], env=env, cwd=REPO, capture_output=True, text=True
    )
    assert check.returncode == 0 and f"model {live_v}" in check.stdout and f"shadow {shadow_v}" in check.stdout
    worker = start_worker(env, tmp_path / "worker.log")
    try:
        wait_until(lambda: http_ok(port, "/readyz"), 60, "worker ready")
        produce(broker, f"in-{unique}", stream)
        wait_until(lambda: _metric(port, "tagger_shadow_items_total") >= len(stream), 60, "every item shadowed")
        assert _metric(port, "tagger_model_info", role="shadow", version=shadow_v) == 1.0
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
    live = read_all(broker, f"out-{unique}", lambda m: len(m) >= len(stream), timeout_s=30)
    shadow = read_all(broker, f"shadow-{unique}", lambda m: len(m) >= len(stream), timeout_s=30)
    assert {TagEvent.model_validate_json(m.value).model_version for m in live} == {live_v}
    assert {TagEvent.model_validate_json(m.value).model_version for m in shadow} == {shadow_v}
    assert len(live) == len(shadow) == len(stream)

    proc = subprocess.run(
        [sys.executable, "-m", "worker.cli", "compare", "--bootstrap", broker]
        + ["--live", f"out-{unique}", "--shadow", f"shadow-{unique}", "--idle-s", "2"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert figures["items"] == len(stream) and figures["live_only"] == figures["shadow_only"] == 0
    assert figures["live_versions"] == [live_v] and figures["shadow_versions"] == [shadow_v]
    assert set(figures["jaccard_by_facet"]) <= {"brand", "category"} and 0 <= figures["identical_share"] <= 1
    assert "identical tag sets" in proc.stdout

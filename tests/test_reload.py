"""Hot reload with fakes: the watcher loads a changed location off the poll thread, refuses what
fails to load, and the loop switches models between batches (no broker, no sleeps)."""

from __future__ import annotations

import gc
import json
import os
import shutil
import weakref
from pathlib import Path

import pytest

from schemas.events import TagEvent
from worker.artifact import ArtifactError, load_manifest
from worker.decode import cache_key
from worker.heap import Heap
from worker.loop import build_loop
from worker.metrics import Metrics
from worker.reload import ModelHolder, Watcher
from worker.settings import BatchingSettings, KafkaSettings, load_settings
from worker.tagging import Engine
from worker.testing import FakeCache, FakeClock, FakeConsumer, FakeEngine, FakePublisher, ManualExecutor

KAFKA = KafkaSettings(input_topic="in", output_topic="out", dlq_topic="dlq", commit_interval_ms=0, poll_timeout_ms=1)


def engine(version: str) -> FakeEngine:
    e = FakeEngine()
    e.model_version = version
    e.taxonomy_version = f"tax-of-{version}"
    return e


class ReloadRig:
    def __init__(self, max_items: int = 2, max_in_flight: int = 1, heap: Heap | None = None) -> None:
        self.clock = clock = FakeClock()
        self.consumer, self.publisher = FakeConsumer("in", 1), FakePublisher(clock)
        self.old, self.cache = engine("v1"), FakeCache()
        self.metrics = metrics = Metrics(now=clock.now)
        self.models = models = ModelHolder(self.old, metrics)
        self.executor = ManualExecutor()
        settings = load_settings(
            kafka=KAFKA, batching=BatchingSettings(max_items=max_items, max_wait_ms=0, max_in_flight=max_in_flight)
        )
        self.prefix = settings.redis.key_prefix
        wall = 1_750_000_000.0  # fixed event timestamps
        self.loop = build_loop(
            settings,
            models,
            self.cache,
            lambda: self.consumer,
            self.publisher,
            clock,
            metrics=metrics,
            executor=self.executor,
            wall_clock=lambda: wall,
            heap=heap,
        )
        assert self.loop.start()

    def produce(self, *ids: str) -> None:
        for i in ids:
            self.consumer.produce(json.dumps({"product_id": i, "title": f"red cotton shirt {i}"}).encode())

    def events(self) -> list[TagEvent]:
        return [TagEvent.model_validate_json(v) for v in self.publisher.values("out")]

    def sample(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels or None)


def test_queued_and_in_flight_batches_finish_with_the_old_model_then_the_new_one_serves() -> None:
    r = ReloadRig(max_items=2, max_in_flight=1)
    r.produce("a", "b", "c", "d")
    r.loop.step()  # poll 4: nothing in flight yet
    r.loop.step()  # batch [a, b] submitted (not run); [c, d] stays queued: one slot
    assert len(r.executor.queue) == 1 and len(r.loop.batcher) == 2
    new = engine("v2")
    r.models.offer(new)
    r.loop.step()  # boundary: [c, d] was tokenized for v1, so it leaves as a v1 batch; then v2 is live
    assert len(r.executor.queue) == 2 and r.models.current is new
    r.produce("e", "f")
    for _ in range(6):
        r.loop.step()
        r.executor.run_all()
    events = r.events()
    assert [(e.product_id, e.model_version, e.taxonomy_version) for e in events] == [
        ("a", "v1", "tax-of-v1"),
        ("b", "v1", "tax-of-v1"),
        ("c", "v1", "tax-of-v1"),
        ("d", "v1", "tax-of-v1"),
        ("e", "v2", "tax-of-v2"),
        ("f", "v2", "tax-of-v2"),
    ]
    assert len(r.old.inferred) == 4 and len(new.inferred) == 2  # each item inferred once, by its model
    assert r.consumer.commit_log[-1] == {r.consumer.tp(): 6}
    # results are cached under the version that computed them
    assert all(cache_key(r.prefix, e.model_version, e.content_hash) in r.cache.data for e in events)
    assert r.sample("tagger_model_info", version="v2", role="live") == 1.0
    assert r.sample("tagger_model_info", version="v1", role="live") is None
    assert r.sample("tagger_model_reloads_total") == 1.0


def test_a_batch_submitted_before_the_switch_runs_with_its_model_even_if_it_starts_after() -> None:
    r = ReloadRig(max_items=2, max_in_flight=1)
    r.produce("a", "b")
    r.loop.step()
    r.loop.step()
    assert len(r.executor.queue) == 1  # submitted with v1, not started
    new = engine("v2")
    r.models.offer(new)
    r.loop.step()  # v2 live before the batch thread starts [a, b]
    r.executor.run_all()
    assert [e.model_version for e in r.events()] == ["v1", "v1"] and new.inferred == []


def test_the_replaced_model_is_collected_once_its_last_batch_is_done() -> None:
    """The worker freezes its heap (worker/heap.py): a frozen model's reference cycles are never
    collected, so a reload settles the heap again once no batch of the old model is in flight."""
    heap = Heap()
    r = ReloadRig(max_items=2, max_in_flight=1, heap=heap)
    cyclic = r.old
    cyclic.self_ref = cyclic  # type: ignore[attr-defined]  # a cycle: only the collector frees it
    gone = weakref.ref(cyclic)
    try:
        heap.settle()  # as `Loop.run` does after start
        assert gc.get_freeze_count() > 0
        r.produce("a", "b")
        r.loop.step()
        r.loop.step()
        assert len(r.executor.queue) == 1  # a v1 batch in flight
        r.models.offer(engine("v2"))
        r.loop.step()
        del cyclic
        r.old = None  # type: ignore[assignment]
        r.loop.step()
        assert heap.unsettled and gone() is not None, "its batch still runs with it"
        r.executor.run_all()
        r.loop.step()
        assert not heap.unsettled
        assert gone() is None, "the old model stayed in the frozen heap"
        assert [e.model_version for e in r.events()] == ["v1", "v1"]
    finally:
        gc.unfreeze()


def test_cache_lookups_after_the_switch_use_the_new_version() -> None:
    r = ReloadRig()
    r.models.activate(engine("v2"))
    r.produce("a")
    chash_probe = ReloadRig()  # same text -> same content hash; fill v1's entry only
    chash_probe.produce("a")
    for _ in range(3):
        chash_probe.loop.step()
        chash_probe.executor.run_all()
    (ev,) = chash_probe.events()
    r.cache.data[cache_key(r.prefix, "v1", ev.content_hash)] = b'[["stale:old", 0.9]]'
    for _ in range(3):
        r.loop.step()
        r.executor.run_all()
    (new_ev,) = r.events()
    assert new_ev.model_version == "v2" and not new_ev.cached and [t.tag for t in new_ev.tags] != ["stale:old"]


# --- the watcher ------------------------------------------------------------------------------


def _fake_artifact(d: Path, version: str) -> Path:
    d.mkdir(parents=True)
    (d / "manifest.json").write_text(json.dumps({"model_version": version}))
    (d / "model.onnx").write_bytes(version.encode())
    return d


def _load_fake(path: Path) -> Engine:
    """Stands in for `TagEngine(path)`: reads the version, refuses a directory marked corrupt."""
    if (path / "CORRUPT").exists():
        raise ArtifactError(f"{path}: model.onnx: sha256 mismatch (file changed since export)")
    return engine(json.loads((path / "manifest.json").read_text())["model_version"])


def test_watcher_follows_a_flipped_symlink_and_refuses_a_corrupt_artifact(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    current = tmp_path / "current"
    current.symlink_to(_fake_artifact(tmp_path / "m1", "v1"))
    metrics = Metrics()
    holder = ModelHolder(engine("v1"), metrics)
    w = Watcher(current, holder, _load_fake, 1.0, metrics)
    assert not w.check() and holder.take_pending() is None  # unchanged

    def flip(target: Path) -> None:  # what the exporter job does: a new link renamed over the old one
        tmp = tmp_path / "current.tmp"
        tmp.symlink_to(target)
        os.replace(tmp, current)

    flip(_fake_artifact(tmp_path / "m2", "v2"))
    assert w.check()
    pending = holder.take_pending()
    assert pending is not None and pending.model_version == "v2"
    holder.activate(pending)

    bad = _fake_artifact(tmp_path / "m3", "v3")
    (bad / "CORRUPT").touch()
    flip(bad)
    assert not w.check() and holder.take_pending() is None
    assert not w.check()  # the same refused state is not retried every poll
    assert holder.model_version == "v2"
    assert metrics.registry.get_sample_value("tagger_model_reload_failures_total") == 1.0
    assert "refused, keeping v2" in caplog.text

    (bad / "CORRUPT").unlink()  # the copy is completed: the location changes again and is retried
    assert w.check()
    pending = holder.take_pending()
    assert pending is not None and pending.model_version == "v3"


def test_watcher_sees_a_directory_replaced_in_place(tmp_path: Path) -> None:
    model = _fake_artifact(tmp_path / "model", "v1")
    metrics = Metrics()
    holder = ModelHolder(engine("v1"), metrics)
    w = Watcher(model, holder, _load_fake, 1.0, metrics)
    staged = _fake_artifact(tmp_path / "stage", "v2")
    shutil.rmtree(model)
    staged.rename(model)  # `tagger export --out model` swaps a staged directory in
    assert w.check()
    pending = holder.take_pending()
    assert pending is not None and pending.model_version == "v2"


def test_real_artifact_with_a_flipped_byte_fails_verification(tiny_model: Path, tmp_path: Path) -> None:
    """The real loader the worker uses refuses a corrupt copy (hash check) before any switch."""
    from worker.main import build_engine
    from worker.settings import load_settings

    copy = tmp_path / "model"
    shutil.copytree(tiny_model, copy)
    onnx = copy / "model.int8.onnx"
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx.write_bytes(bytes(data))
    assert load_manifest(copy, verify=False).model_version  # the manifest itself is fine
    with pytest.raises(ArtifactError, match="sha256 mismatch"):
        build_engine(load_settings(model={"path": copy}), copy)

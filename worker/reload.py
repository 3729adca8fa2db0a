"""Hot reload of the model: a background thread watches the model location (a directory, or a
`current` symlink flipped atomically by the exporter job), loads a new verified artifact beside the
live one, and hands it to `ModelHolder`; the poll loop switches between batches (`Loop._switch_model`).

A corrupt or half-written artifact fails its hash check and is refused: the old model keeps serving,
the failure is logged and counted, and the same location state is not retried until it changes.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from worker.artifact import MANIFEST
from worker.engine import Encoded, Outputs, Tag
from worker.evidence import ExplainBasis
from worker.metrics import Metrics
from worker.tagging import Engine

log = logging.getLogger(__name__)


class ModelHolder:
    """The live engine, and a pending one offered by the watcher. Steps on the poll thread
    (`CacheLookup`, `Tokenize`) use the holder as their engine, so they follow the live model;
    batches get the engine they were prepared with from the loop, never the holder."""

    def __init__(self, engine: Engine, metrics: Metrics, role: str = "live") -> None:
        self._current: Engine = engine
        self._pending: Engine | None = None
        self._lock = threading.Lock()
        self.metrics, self.role = metrics, role
        metrics.model_info.labels(engine.model_version, role).set(1)

    @property
    def current(self) -> Engine:
        return self._current

    @property
    def model_version(self) -> str:
        return self._current.model_version

    @property
    def taxonomy_version(self) -> str:
        return self._current.taxonomy_version

    def encode(self, texts: Sequence[str]) -> list[Encoded]:
        return self._current.encode(list(texts))

    def run(self, items: list[Encoded]) -> Outputs:
        return self._current.run(items)

    def decode(self, items: list[Encoded], outputs: Outputs) -> list[list[Tag]]:
        return self._current.decode(items, outputs)

    @property
    def explain_basis(self) -> ExplainBasis | None:
        return self._current.explain_basis

    def offer(self, engine: Engine) -> None:
        """From the loading thread: a verified, loaded engine to switch to at the next batch boundary."""
        with self._lock:
            self._pending = engine

    def take_pending(self) -> Engine | None:
        with self._lock:
            engine, self._pending = self._pending, None
        return engine

    def activate(self, engine: Engine) -> None:
        """On the poll thread, between batches: `engine` serves everything prepared from now on."""
        old = self._current
        self._current = engine
        if old.model_version != engine.model_version:
            self.metrics.model_info.remove(old.model_version, self.role)
        self.metrics.model_info.labels(engine.model_version, self.role).set(1)
        self.metrics.model_reloads.inc()
        log.info(
            "%s model switched %s -> %s (taxonomy %s)",
            self.role,
            old.model_version,
            engine.model_version,
            engine.taxonomy_version,
        )


def location_state(path: Path) -> str:
    """What identifies the artifact at `path` now: its real path (a flipped symlink changes it) and
    the manifest's bytes, size and mtime of every file (a directory rewritten in place changes them).
    Cheap: no file contents are hashed but the manifest."""
    real = path.resolve()
    h = hashlib.sha256(str(real).encode())
    manifest = real / MANIFEST
    try:
        h.update(manifest.read_bytes())
        for p in sorted(real.rglob("*")):
            if p.is_file():
                st = p.stat()
                h.update(f"{p.relative_to(real)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    except OSError as exc:  # mid-swap: a file vanished between listing and stat
        h.update(f"unreadable: {exc}".encode())
    return h.hexdigest()


class Watcher:
    """Polls `path` every `interval_s` on its own thread; a changed location is loaded with `load`
    (hash-verified: `TagEngine(..., verify=True)`) here, off the poll and batch threads."""

    def __init__(
        self,
        path: Path,
        holder: ModelHolder,
        load: Callable[[Path], Engine],
        interval_s: float,
        metrics: Metrics,
    ) -> None:
        self.path, self.holder, self.load, self.interval_s, self.metrics = path, holder, load, interval_s, metrics
        self.stop = threading.Event()
        self._seen = location_state(path)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="model-watch", daemon=True)
        self._thread.start()

    def close(self, timeout_s: float = 5.0) -> None:
        self.stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _run(self) -> None:
        while not self.stop.wait(self.interval_s):
            self.check()

    def check(self) -> bool:
        """One look at the location; True when a new engine was offered."""
        state = location_state(self.path)
        if state == self._seen:
            return False
        self._seen = state  # a refused state is not retried; a later change (a completed copy) is
        real = self.path.resolve()
        try:
            engine = self.load(real)
        except Exception as exc:  # any artifact or runtime error: the live model keeps serving
            self.metrics.model_reload_failures.inc()
            log.error("new model at %s refused, keeping %s: %s", real, self.holder.model_version, exc)
            return False
        if engine.model_version == self.holder.model_version:
            log.info("model location %s changed but holds the live version %s", real, engine.model_version)
            return False
        log.info("new model %s loaded from %s; switching at the next batch", engine.model_version, real)
        self.holder.offer(engine)
        return True

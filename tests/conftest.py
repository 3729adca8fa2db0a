"""Shared fixtures: a real Tansu broker, a real Redis (reused or started), a tiny model artifact."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.model_factory import build_tiny_artifact

    return build_tiny_artifact(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def broker() -> Iterator[str]:
    from scripts.local_services import start_tansu

    svc = start_tansu()
    yield svc.url
    svc.stop()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    from scripts.local_services import ensure_redis

    svc = ensure_redis()
    yield svc.url
    svc.stop()


@pytest.fixture
def unique() -> str:
    """Per-test suffix for topics, groups and key prefixes."""
    return uuid.uuid4().hex[:10]

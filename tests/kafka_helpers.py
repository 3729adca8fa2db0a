"""Helpers for tests that talk to the real (Tansu) broker; they live in scripts/ (shared with the
benchmarks and the demo)."""

from scripts.worker_tools import (
    FAST_GROUP,
    REPO,
    produce,
    read_all,
    served_worker_env,
    start_worker,
    values,
    worker_env,
    worker_topics,
)

__all__ = [
    "FAST_GROUP",
    "REPO",
    "produce",
    "read_all",
    "served_worker_env",
    "start_worker",
    "values",
    "worker_env",
    "worker_topics",
]

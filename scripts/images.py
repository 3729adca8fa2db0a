"""`make images`: build the worker and exporter images (and the compose smoke's stand-ins) with podman.

Installs podman when missing, makes the local `python:3.11-slim` base when no registry can supply
it, builds the Dockerfile's `worker` and `exporter` targets with this machine's pip configuration
mounted read-only, then checks what the images promise: the worker carries no torch and starts
with a read-only root filesystem as uid 10001. Prints image sizes and build times.

    python3 -m scripts.images [--no-standins] [--no-cache]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from scripts.podman import (
    BASE_IMAGE,
    EXPORTER_IMAGE,
    KAFKA_STANDIN_IMAGE,
    REDIS_STANDIN_IMAGE,
    REPO,
    STANDINS_DOCKERFILE,
    WORKER_IMAGE,
    ImageError,
    build_mounts,
    ensure_base_image,
    ensure_podman,
    image_size_mb,
    log,
    run,
)

BUILD_TIMEOUT_S = 3600.0  # a cold exporter build downloads torch's dependencies; never hang forever
CHECK_TIMEOUT_S = 120.0
# uid/gid of the images' `tagger` user (Dockerfile, compose `user:`, k8s runAsUser).
TAGGER_UID = 10001
# How each image is run for the checks below: as the orchestrators run it.
HARDENED = [
    "--rm", "--read-only", "--user", f"{TAGGER_UID}:{TAGGER_UID}", "--tmpfs", "/tmp",
    "--network", "none", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
]  # fmt: skip


def build(
    tag: str, target: str, mounts: list[str], *, dockerfile: Path | None = None, context: Path = REPO, no_cache: bool
) -> float:
    t0 = time.monotonic()
    cmd = [
        "podman", "build", "--network=host",
        # docker format keeps HEALTHCHECK (OCI image config has no such field; podman would drop it)
        "--format", "docker",
        "--target", target, "-t", tag, *mounts,
    ]  # fmt: skip
    if dockerfile is not None:
        cmd += ["-f", str(dockerfile)]
    if no_cache:
        cmd.append("--no-cache")
    log(f"building {tag} (target {target})")
    run([*cmd, str(context)], timeout=BUILD_TIMEOUT_S, what=f"build of {tag}")
    seconds = time.monotonic() - t0
    log(f"built {tag} in {seconds:.0f} s")
    return seconds


def python_in(image: str, probe: str, failure: str) -> str:
    """The output of `python -c probe` in `image`, run as in production (read-only, unprivileged);
    a non-zero exit raises ImageError with `failure` and what the probe printed."""
    proc = run(["podman", "run", *HARDENED, "--entrypoint", "python", image, "-c", probe], check=False, capture=True)
    if proc.returncode != 0:
        raise ImageError(f"{failure}:\n{(proc.stdout + proc.stderr).strip()}")
    return proc.stdout


def check_worker_has_no_torch(image: str = WORKER_IMAGE) -> None:
    probe = (
        "import importlib.util as u, sys; "
        "bad = [m for m in ('torch', 'exporter') if u.find_spec(m) is not None]; "
        "print('present:', bad) if bad else None; sys.exit(1 if bad else 0)"
    )
    python_in(image, probe, f"worker image {image} must not carry torch or the exporter")
    log("worker image: no torch, no exporter package")


def check_worker_starts_read_only(image: str = WORKER_IMAGE) -> None:
    """Entry point, settings, ONNX Runtime and tokenizer imports work read-only as uid 10001.

    Without a model the start-up check must refuse cleanly (exit 2, naming the model path); the
    compose smoke runs the worker with a real model.
    """
    probe = (
        "import os, sys, onnxruntime, tokenizers, worker.main, worker.kafka_io, worker.health; "
        f"assert os.getuid() == {TAGGER_UID}, os.getuid(); "
        "open('/tmp/probe', 'w').close(); "
        "ro = False\n"
        "try:\n    open('/app/probe', 'w')\nexcept OSError:\n    ro = True\n"
        "sys.exit(0 if ro else 'root filesystem is writable')"
    )
    python_in(image, probe, f"worker image {image} does not run read-only as uid {TAGGER_UID}")
    missing = "/models/none"
    proc = run(
        ["podman", "run", *HARDENED, "-e", f"TAGGER_MODEL__PATH={missing}", image, "worker", "--check"],
        check=False,
        capture=True,
        timeout=CHECK_TIMEOUT_S,
    )
    output = proc.stdout + proc.stderr
    if proc.returncode != 2 or missing not in output:
        raise ImageError(
            f"`tagger worker --check` without a model should exit 2 naming {missing}; "
            f"got exit {proc.returncode}:\n{output.strip()[-2000:]}"
        )
    log(f"worker image: starts read-only as uid {TAGGER_UID} (`worker --check` refuses a missing model cleanly)")


def check_exporter(image: str = EXPORTER_IMAGE) -> None:
    probe = (
        "import torch, exporter.train; from exporter.base_models import resolve_base_model; "
        "print(torch.__version__, resolve_base_model('all-MiniLM-L6-v2'))"
    )
    versions = python_in(image, probe, f"exporter image {image} cannot import torch or find its base model")
    log(f"exporter image: torch {versions.strip()}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="make images", description=__doc__.splitlines()[0])
    p.add_argument("--no-standins", action="store_true", help="skip the compose smoke's Kafka/Redis stand-ins")
    p.add_argument("--no-cache", action="store_true", help="rebuild every layer")
    args = p.parse_args(argv)
    t0 = time.monotonic()
    try:
        ensure_podman()
        ensure_base_image()
        times: dict[str, float] = {}
        with tempfile.TemporaryDirectory(prefix="tagger-pip-") as tmp:
            mounts = build_mounts(Path(tmp))
            times[WORKER_IMAGE] = build(WORKER_IMAGE, "worker", mounts, no_cache=args.no_cache)
            times[EXPORTER_IMAGE] = build(EXPORTER_IMAGE, "exporter", mounts, no_cache=args.no_cache)
            if not args.no_standins:
                for tag, target in ((KAFKA_STANDIN_IMAGE, "kafka"), (REDIS_STANDIN_IMAGE, "redis")):
                    times[tag] = build(
                        tag, target, mounts, dockerfile=STANDINS_DOCKERFILE, context=STANDINS_DOCKERFILE.parent,
                        no_cache=args.no_cache,
                    )  # fmt: skip
        check_worker_has_no_torch()
        check_worker_starts_read_only()
        check_exporter()
    except ImageError as exc:
        print(f"make images: FAILED: {exc}", file=sys.stderr)
        return 1
    print(f"\n{'image':45} {'size':>9} {'build':>7}")
    for tag in (BASE_IMAGE, *times):
        built = f"{times[tag]:6.0f}s" if tag in times else "      -"
        print(f"{tag:45} {image_size_mb(tag):6.0f} MB {built}")
    print(f"make images: ok in {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Podman plumbing shared by `make images` and `make compose-smoke` (stdlib only: runs before any venv).

This machine has no Docker engine and no reachable image registry. Debian's podman builds and runs
images as root once it uses runc and cgroupfs (deploy/podman/containers.conf), `python:3.11-slim`
exists locally (made here by debootstrap), and builds see the host's pip configuration.
"""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlparse

REPO = Path(__file__).resolve().parents[1]
CONTAINERS_CONF = REPO / "deploy" / "podman" / "containers.conf"
BASE_IMAGE = "localhost/python:3.11-slim"
WORKER_IMAGE = "localhost/product-tagger:worker"
EXPORTER_IMAGE = "localhost/product-tagger:exporter"
KAFKA_STANDIN_IMAGE = "localhost/product-tagger-standin:kafka"
REDIS_STANDIN_IMAGE = "localhost/product-tagger-standin:redis"
STANDINS_DOCKERFILE = REPO / "deploy" / "standins.Dockerfile"
# What the slim Python image offers that the Dockerfile relies on (python, venv, pip, groupadd).
BASE_PACKAGES = ["python3", "python3-venv", "python3-pip", "python-is-python3", "ca-certificates"]
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# pip options whose values name files or directories on this machine.
_PATH_OPTIONS = {"find-links", "constraint", "requirement", "cert", "client-cert"}
_URL_OPTIONS = {"index-url", "extra-index-url"}


class ImageError(RuntimeError):
    """A step of building or checking the images failed; the message says which and why."""


def log(msg: str) -> None:
    print(f"[images] {msg}", flush=True)


def podman_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("CONTAINERS_CONF", str(CONTAINERS_CONF))
    return env


def run(
    cmd: Sequence[str], *, check: bool = True, capture: bool = False, timeout: float | None = None, what: str = ""
) -> subprocess.CompletedProcess[str]:
    """Run a command with podman's environment; a failure raises ImageError naming `what`."""
    try:
        proc = subprocess.run(
            list(cmd), env=podman_env(), text=True, capture_output=capture, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise ImageError(f"{what or cmd[0]}: timed out after {timeout:.0f} s: {' '.join(cmd)}") from exc
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout or "").strip()[-2000:] if capture else ""
        raise ImageError(f"{what or cmd[0]} failed (exit {proc.returncode}): {' '.join(cmd)}\n{detail}".rstrip())
    return proc


def ensure_podman() -> None:
    """Install podman, runc and debootstrap from Debian when missing (needs root, ~30 s)."""
    missing = [tool for tool in ("podman", "runc", "debootstrap") if shutil.which(tool) is None]
    if not missing:
        return
    if os.geteuid() != 0:
        raise ImageError(f"missing {', '.join(missing)}; install podman, runc and debootstrap (needs root)")
    log(f"installing podman runc debootstrap (missing: {', '.join(missing)})")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "podman", "runc", "debootstrap"]):
        if subprocess.run(cmd, env=env, check=False).returncode != 0:
            raise ImageError(f"apt-get could not install podman: {' '.join(cmd)}")


def image_exists(name: str) -> bool:
    return run(["podman", "image", "exists", name], check=False, capture=True).returncode == 0


def debian_mirror() -> str:
    """The Debian mirror this machine's apt uses (debootstrap needs one; registries are not reachable)."""
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in sources:
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        for match in re.finditer(r"(?:^URIs:|^deb)\s+(?:\[[^]]*\]\s+)?(\S+)", text, re.M):
            uri = match.group(1).rstrip("/")
            if uri.endswith("/debian"):
                return uri
    return "http://deb.debian.org/debian"


def ensure_base_image(name: str = BASE_IMAGE) -> bool:
    """Make `python:3.11-slim` locally (Debian bookworm's Python 3.11) when no registry can supply it.

    Returns True when it was built now. The Dockerfile keeps its standard `FROM python:3.11-slim`.
    """
    if image_exists(name):
        return False
    if os.geteuid() != 0:
        raise ImageError(f"base image {name} is missing and debootstrap needs root")
    mirror = debian_mirror()
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tagger-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        log(f"making {name}: debootstrap bookworm from {mirror}")
        run(["debootstrap", "--variant=minbase", "bookworm", str(rootfs), mirror], what="debootstrap")
        chroot_env = "DEBIAN_FRONTEND=noninteractive"
        run(
            ["chroot", str(rootfs), "/usr/bin/env", chroot_env, "apt-get", "install", "-y", "-qq",
             "--no-install-recommends", *BASE_PACKAGES],
            what="apt-get install python3 in the base rootfs",
        )  # fmt: skip
        run(["chroot", str(rootfs), "apt-get", "clean"], what="apt-get clean")
        for sub in ("var/lib/apt/lists", "var/cache/apt/archives", "var/log", "tmp"):
            for child in (rootfs / sub).glob("*"):
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
        log(f"importing the rootfs as {name}")
        tar = subprocess.Popen(["tar", "--numeric-owner", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        try:
            imported = subprocess.run(
                ["podman", "import", "--change", "ENV LANG=C.UTF-8", "--change", 'CMD ["python3"]', "-", name],
                stdin=tar.stdout,
                env=podman_env(),
                check=False,
            )
        finally:
            if tar.stdout is not None:
                tar.stdout.close()
            tar.wait()
        if imported.returncode != 0 or tar.returncode != 0:
            raise ImageError(
                f"podman import of the base rootfs failed (tar {tar.returncode}, import {imported.returncode})"
            )
    log(f"base image {name} made in {time.monotonic() - t0:.0f} s")
    return True


# ------------------------------------------------------------------------------------------------
# the host's pip configuration, handed to `podman build` (the Dockerfile stays standard)
# ------------------------------------------------------------------------------------------------


def parse_pip_config_list(text: str) -> dict[str, str]:
    """Options from `pip config list` output (`scope.key='value'` lines: files first, then `:env:`),
    later lines winning, as pip lets PIP_* variables override its files."""
    options: dict[str, str] = {}
    for line in text.splitlines():
        match = re.fullmatch(r"([^.]*)\.([A-Za-z0-9_-]+)='(.*)'", line.strip())
        if match and match.group(1) in ("global", "install", ":env:"):
            options[match.group(2)] = match.group(3)
    return options


def host_pip_config(python: str = sys.executable) -> dict[str, str]:
    """The effective pip options of this machine: config files and PIP_* variables."""
    proc = subprocess.run([python, "-m", "pip", "config", "list"], text=True, capture_output=True, check=False)
    return parse_pip_config_list(proc.stdout) if proc.returncode == 0 else {}


def local_paths(options: dict[str, str]) -> list[Path]:
    """Files and directories of this machine that the pip options name (mounted read-only in builds)."""
    paths: list[Path] = []
    for key, value in options.items():
        for item in value.split():
            if key in _URL_OPTIONS or item.startswith("file:"):
                parsed = urlparse(item)
                if parsed.scheme != "file":
                    continue
                item = parsed.path
            elif key not in _PATH_OPTIONS:
                continue
            path = Path(item)
            if key in _URL_OPTIONS and path.name == "simple":
                # a local PEP 503 index links to its files relatively (`../../files/...`): mount its root
                path = path.parent
            if path.is_absolute() and path.exists() and path not in paths:
                paths.append(path)
    return paths


def write_pip_conf(options: dict[str, str], directory: Path) -> Path:
    cfg = configparser.ConfigParser(interpolation=None)
    cfg["global"] = dict(options)
    path = directory / "pip.conf"
    with path.open("w", encoding="utf-8") as f:
        cfg.write(f)
    return path


def build_mounts(work: Path) -> list[str]:
    """`podman build` arguments that give RUN steps this machine's pip set-up, read-only.

    The generated pip.conf (every option, PIP_* variables folded in) is mounted at /etc/pip.conf,
    the only global pip config file in the base image; every local index, wheel directory,
    constraints file and the CA bundle it names is mounted at its own path.
    """
    options = host_pip_config()
    if HOST_CA_BUNDLE.is_file():
        options.setdefault("cert", str(HOST_CA_BUNDLE))
    mounts = ["-v", f"{write_pip_conf(options, work)}:/etc/pip.conf:ro"]
    for path in local_paths(options):
        mounts += ["-v", f"{path}:{path}:ro"]
    return mounts


def image_size_mb(name: str) -> float:
    out = run(["podman", "image", "inspect", "--format", "{{.Size}}", name], capture=True, what=f"inspect {name}")
    return int(out.stdout.strip()) / 1e6

"""`make compose-smoke`: the compose stack, for real, on this machine (podman + podman-compose).

docker-compose.yml plus deploy/compose.local.yml (local stand-ins for the registry-only images).
Each step is driven explicitly, with its own deadline and a failure message naming the service:

 1. kafka (Tansu) and redis up, healthy by their own compose health checks;
 2. kafka-init creates the topics (the production command, through the stand-in CLI);
 3. the exporter trains a smoke-sized model into the `models` volume and exits 0;
 4. the worker starts read-only as uid 10001, its compose health check passes, /readyz is 200;
 5. real Flipkart titles are produced and a tag event is read back for every one;
 6. /metrics from inside the container counts them; the worker's log lines are JSON;
 7. SIGTERM (`podman stop`, the compose grace period) during a burst: the worker finishes what it
    consumed (its summary line: consumed = tagged + dead-lettered) and exits 0 within the grace;
 8. everything is torn down (also on failure), volumes included.

    python -m scripts.compose_smoke [--products 200] [--keep]   (after `make images`)
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from scripts.podman import (
    EXPORTER_IMAGE,
    KAFKA_STANDIN_IMAGE,
    REDIS_STANDIN_IMAGE,
    REPO,
    WORKER_IMAGE,
    ImageError,
    image_exists,
    podman_env,
)

PROJECT = "tagger-smoke"
COMPOSE_FILES = [REPO / "docker-compose.yml", REPO / "deploy" / "compose.local.yml"]
DATA = REPO.parent / "shared" / "data" / "flipkart-20k.jsonl"  # docker-compose.yml mounts ../shared/data
CLIENT = REPO / "deploy" / "smoke_client.py"
PODMAN_COMPOSE_VERSION = "1.6.0"
# Deadlines per step (seconds). The exporter's includes torch start-up, training, ONNX export and int8.
HEALTHY_S = 60.0
INIT_S = 90.0
EXPORT_S = 1200.0
READY_S = 180.0
CLIENT_S = 180.0


class SmokeError(RuntimeError):
    """A step of the smoke failed; the message names the service and what was expected."""


def say(msg: str) -> None:
    print(f"[compose-smoke] {msg}", flush=True)


def podman_compose() -> list[str]:
    """podman-compose from PATH or beside this interpreter; installed (pinned) into it when missing."""
    found = shutil.which("podman-compose") or shutil.which("podman-compose", path=str(Path(sys.executable).parent))
    if found is None:
        say(f"installing podman-compose=={PODMAN_COMPOSE_VERSION}")
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", f"podman-compose=={PODMAN_COMPOSE_VERSION}"]
        subprocess.run(cmd, check=True)
        found = shutil.which("podman-compose", path=str(Path(sys.executable).parent))
    if found is None:
        raise SmokeError("podman-compose is not installed and could not be installed")
    return [found, "-p", PROJECT, *(arg for f in COMPOSE_FILES for arg in ("-f", str(f)))]


def sh(
    cmd: list[str], *, timeout: float = 120.0, check: bool = True, what: str = ""
) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(cmd, env=podman_env(), text=True, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise SmokeError(f"{what or cmd[0]}: no answer within {timeout:.0f} s: {' '.join(cmd)}") from exc
    if check and proc.returncode != 0:
        out = (proc.stderr + proc.stdout).strip()[-3000:]
        raise SmokeError(f"{what or cmd[0]} failed (exit {proc.returncode}): {' '.join(cmd)}\n{out}")
    return proc


def container(service: str) -> str:
    """Name of the compose service's container (podman-compose labels them like docker compose)."""
    proc = sh(
        ["podman", "ps", "-a", "--format", "{{.Names}}",
         "--filter", f"label=com.docker.compose.project={PROJECT}",
         "--filter", f"label=com.docker.compose.service={service}"],
        what=f"find the {service} container",
    )  # fmt: skip
    names = proc.stdout.split()
    if len(names) != 1:
        raise SmokeError(f"{service}: expected one container, found {names or 'none'}")
    return names[0]


def logs_tail(service: str, lines: int = 40) -> str:
    try:
        proc = sh(["podman", "logs", "--tail", str(lines), container(service)], check=False, what=f"{service} logs")
    except SmokeError as exc:
        return str(exc)
    return (proc.stdout + proc.stderr).strip()


def wait_for(what: str, ok: Callable[[], bool], timeout_s: float, service: str, every_s: float = 1.0) -> float:
    """Poll `ok` until it is true; on timeout fail naming the service, with its last log lines."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if ok():
            return time.monotonic() - t0
        time.sleep(every_s)
    raise SmokeError(f"{service}: {what} not reached within {timeout_s:.0f} s; last log lines:\n{logs_tail(service)}")


def state(service: str) -> dict:
    out = sh(["podman", "inspect", "--format", "{{json .State}}", container(service)], what=f"inspect {service}")
    return json.loads(out.stdout)


def healthy(service: str) -> bool:
    # Runs the service's own compose health check now (podman's timers need systemd, absent here).
    return sh(["podman", "healthcheck", "run", container(service)], check=False, timeout=30).returncode == 0


def exited(service: str) -> bool:
    return state(service).get("Status") == "exited"


def run_to_completion(compose: list[str], service: str, timeout_s: float) -> float:
    sh([*compose, "up", "-d", "--no-deps", service], what=f"start {service}")
    seconds = wait_for("exit", lambda: exited(service), timeout_s, service, every_s=2.0)
    code = state(service).get("ExitCode")
    if code != 0:
        raise SmokeError(f"{service}: exited with {code}; last log lines:\n{logs_tail(service)}")
    return seconds


def http_get(service: str, path: str, port: int = 8080) -> tuple[int, str]:
    """GET http://127.0.0.1:PORT/PATH from inside the service's container (no host ports needed)."""
    probe = (
        "import sys, urllib.request, urllib.error\n"
        "try:\n"
        f"    r = urllib.request.urlopen('http://127.0.0.1:{port}{path}', timeout=3)\n"
        "    code, body = r.status, r.read()\n"
        "except urllib.error.HTTPError as e:\n"
        "    code, body = e.code, e.read()\n"
        "except OSError as e:\n"
        "    code, body = 0, str(e).encode()\n"
        "sys.stdout.write(str(code) + '\\n' + body.decode(errors='replace'))\n"
    )
    proc = sh(["podman", "exec", container(service), "python", "-c", probe], check=False, timeout=20)
    head, _, body = proc.stdout.partition("\n")
    return (int(head) if head.isdigit() else 0), body


def products(n: int, skip: int = 0, prefix: str = "smoke") -> list[dict[str, str]]:
    """Real titles from the end of the data file (the smoke's model trains on its first rows)."""
    lines = DATA.read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines[len(lines) - skip - n : len(lines) - skip]]
    return [{"product_id": f"{prefix}-{i}-{r['id']}", "title": r["title"]} for i, r in enumerate(rows)]


def run_client(files: dict[str, list[dict[str, str]]], *args: str) -> subprocess.CompletedProcess[str]:
    """deploy/smoke_client.py in the worker image, on the compose network, with `files` under /smoke."""
    with tempfile.TemporaryDirectory(prefix="tagger-smoke-") as tmp:
        for name, rows in files.items():
            (Path(tmp) / name).write_text(json.dumps(rows), encoding="utf-8")
            (Path(tmp) / name).chmod(0o644)
        Path(tmp).chmod(0o755)  # the client runs as uid 10001: it must be able to read the mount
        return sh(
            ["podman", "run", "--rm", "--no-healthcheck", "--network", f"{PROJECT}_default",
             "--read-only", "--user", "10001", "-v", f"{tmp}:/smoke:ro", "-v", f"{CLIENT}:/smoke-client/client.py:ro",
             "--entrypoint", "python", WORKER_IMAGE, "/smoke-client/client.py", *args],
            timeout=CLIENT_S, check=False, what="smoke client",
        )  # fmt: skip


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.M)
    if match is None:
        raise SmokeError(f"worker: /metrics has no {name}")
    return float(match.group(1))


def smoke(compose: list[str], n: int, burst: int, timings: dict[str, float]) -> None:
    say("kafka (Tansu stand-in) and redis (Debian redis-server stand-in): starting")
    sh([*compose, "up", "-d", "--no-deps", "kafka", "redis"], what="start kafka and redis")
    for service in ("kafka", "redis"):
        wait_for("healthy (its compose health check)", functools.partial(healthy, service), HEALTHY_S, service)
    say("kafka-init: creating topics")
    timings["kafka-init"] = run_to_completion(compose, "kafka-init", INIT_S)
    topics = logs_tail("kafka-init")
    for topic in ("products.new", "products.tags", "products.dlq"):
        if topic not in topics:
            raise SmokeError(f"kafka-init: topic {topic} not listed:\n{topics}")
    say("exporter: training a smoke-sized model into the models volume")
    timings["exporter"] = run_to_completion(compose, "exporter", EXPORT_S)
    say(f"exporter: done in {timings['exporter']:.0f} s; its last lines:\n{logs_tail('exporter', 6)}")

    sh([*compose, "up", "-d", "--no-deps", "worker"], what="start worker")
    worker = container("worker")
    cfg = sh(["podman", "inspect", "--format", "{{json .HostConfig}}", worker], what="inspect worker").stdout
    host = json.loads(cfg)
    user = sh(["podman", "inspect", "--format", "{{.Config.User}}", worker], what="inspect worker").stdout.strip()
    if not host.get("ReadonlyRootfs") or not user.startswith("10001"):
        raise SmokeError(f"worker: expected a read-only root and user 10001, got {host.get('ReadonlyRootfs')}/{user}")
    env = sh(["podman", "inspect", "--format", "{{json .Config.Env}}", worker], what="inspect worker").stdout
    port = int(dict(e.split("=", 1) for e in json.loads(env)).get("TAGGER_HTTP__PORT", "8080"))
    timings["worker ready"] = wait_for(
        "/readyz 200", lambda: http_get("worker", "/readyz", port)[0] == 200, READY_S, "worker"
    )
    wait_for("healthy (its compose health check)", lambda: healthy("worker"), 30, "worker")
    say(
        f"worker: ready in {timings['worker ready']:.0f} s, read-only as uid {user}, "
        f"health check passing on TAGGER_HTTP__PORT={port}"
    )

    t0 = time.monotonic()
    proc = run_client({"products.json": products(n)}, "--timeout-s", str(CLIENT_S - 30))
    timings["produce -> tag events"] = time.monotonic() - t0
    try:
        summary = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError) as exc:
        raise SmokeError(f"smoke client: no summary (exit {proc.returncode}):\n{proc.stderr[-3000:]}") from exc
    if proc.returncode != 0:
        raise SmokeError(
            f"worker: tag events missing for {summary['produced'] - summary['tag_events']} of {summary['produced']} "
            f"products: {json.dumps(summary)[:1500]}\nworker log:\n{logs_tail('worker')}"
        )
    say(
        f"worker: {summary['tag_events']}/{summary['produced']} tag events read back "
        f"({summary['with_tags']} with tags) in {summary['seconds']} s; model {summary['model_versions']}"
    )
    sample = summary["sample"] or {}
    say(f"sample: {sample.get('product_id')}: {[t['tag'] for t in sample.get('tags', [])][:4]}")

    code, text = http_get("worker", "/metrics", port)
    if code != 200:
        raise SmokeError(f"worker: /metrics answered {code}")
    consumed, produced = metric(text, "tagger_consumed_total"), metric(text, "tagger_produced_total")
    if consumed < n or produced < n:
        raise SmokeError(f"worker: /metrics counts consumed={consumed} produced={produced}, expected >= {n}")
    say(f"worker: /metrics tagger_consumed_total={consumed:.0f} tagger_produced_total={produced:.0f}")

    out = sh(["podman", "logs", worker], what="worker logs")
    lines = [ln for ln in (out.stdout + out.stderr).splitlines() if ln.strip()]
    not_json = [ln for ln in lines if not _is_json_object(ln)]
    if not lines or not_json:
        raise SmokeError(
            f"worker: TAGGER_LOG__JSON_FORMAT=true but {len(not_json)} log lines are not JSON: {not_json[:3]}"
        )
    say(f"worker: {len(lines)} log lines, all JSON")

    # SIGTERM while a burst is being tagged: the drain must finish what was consumed, then exit 0.
    proc = run_client({"products.json": products(burst, skip=n, prefix="burst")}, "--produce-only")
    if proc.returncode != 0:
        raise SmokeError(f"smoke client: producing the burst failed:\n{proc.stderr[-2000:]}")
    grace = _grace_seconds()
    t0 = time.monotonic()
    sh(["podman", "stop", "-t", str(grace), worker], timeout=grace + 30, what="stop worker")
    timings["SIGTERM -> exit"] = time.monotonic() - t0
    exit_code = state("worker").get("ExitCode")
    last = logs_tail("worker", 5)
    done = re.search(r"worker stopped in [0-9.]+ s: consumed (\d+), tagged (\d+) .*dead-lettered (\d+)", last)
    if exit_code != 0 or done is None or timings["SIGTERM -> exit"] >= grace:
        raise SmokeError(f"worker: SIGTERM should drain and exit 0 within {grace} s; exit {exit_code}, log:\n{last}")
    consumed, tagged, dead = (int(g) for g in done.groups())
    if consumed != tagged + dead:
        raise SmokeError(f"worker: drain left work behind: consumed {consumed}, tagged {tagged}, dead {dead}")
    say(
        f"worker: SIGTERM during a {burst}-event burst -> drained (consumed {consumed} = tagged {tagged} + "
        f"dead-lettered {dead}) and exited 0 in {timings['SIGTERM -> exit']:.1f} s (grace {grace} s)"
    )


def _is_json_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def _grace_seconds() -> int:
    text = (REPO / "docker-compose.yml").read_text(encoding="utf-8")
    match = re.search(r"stop_grace_period:\s*(\d+)s", text)
    if match is None:
        raise SmokeError("docker-compose.yml: no stop_grace_period for the worker")
    return int(match.group(1))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="make compose-smoke", description=__doc__.splitlines()[0])
    p.add_argument("--products", type=int, default=200, help="real titles to produce (default 200)")
    p.add_argument("--burst", type=int, default=2000, help="events in flight when SIGTERM arrives (default 2000)")
    p.add_argument("--keep", action="store_true", help="leave the stack up for inspection (tear down by hand)")
    args = p.parse_args(argv)
    missing = [
        i for i in (WORKER_IMAGE, EXPORTER_IMAGE, KAFKA_STANDIN_IMAGE, REDIS_STANDIN_IMAGE) if not image_exists(i)
    ]
    if missing:
        print(f"make compose-smoke: missing images {missing}: run `make images` first", file=sys.stderr)
        return 1
    if not DATA.is_file():
        print(f"make compose-smoke: {DATA} not found (docker-compose.yml mounts ../shared/data)", file=sys.stderr)
        return 1
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    compose: list[str] = []
    try:
        compose = podman_compose()
        sh([*compose, "down", "-v"], check=False, timeout=180)  # leftovers of an interrupted run
        smoke(compose, args.products, args.burst, timings)
    except (SmokeError, ImageError) as exc:
        print(f"make compose-smoke: FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        if compose and not args.keep:
            say("tearing down (containers, network, models volume)")
            sh([*compose, "down", "-v", "-t", "5"], check=False, timeout=300)
    timings["total"] = time.monotonic() - t0
    print("\n".join(f"  {k:24} {v:7.1f} s" for k, v in timings.items()))
    print("make compose-smoke: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())

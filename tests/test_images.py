"""Container images: the build helpers' pure logic, the Kafka stand-in CLI against a real Tansu, and
(slow) `make images` + `make compose-smoke` for real with podman."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from scripts.local_services import start_tansu, tansu_binary
from scripts.podman import local_paths, parse_pip_config_list, write_pip_conf

REPO = Path(__file__).resolve().parents[1]
STANDINS = REPO / "deploy" / "standins"


# ------------------------------------------------------------------------------------------------
# the host pip configuration handed to `podman build`
# ------------------------------------------------------------------------------------------------


def test_pip_config_list_env_overrides_files() -> None:
    text = "\n".join(
        [
            "global.find-links='/srv/wheels'",
            "global.extra-index-url='file:///srv/pypi/simple https://mirror.example/simple'",
            "install.no-compile='1'",
            "user.ignored='x'",
            ":env:.find-links='/opt/wheels'",
            ":env:.cert='/etc/ssl/certs/ca-certificates.crt'",
        ]
    )
    options = parse_pip_config_list(text)
    assert options == {
        "find-links": "/opt/wheels",  # PIP_FIND_LINKS wins over the file, as in pip
        "extra-index-url": "file:///srv/pypi/simple https://mirror.example/simple",
        "no-compile": "1",
        "cert": "/etc/ssl/certs/ca-certificates.crt",
    }


def test_local_paths_mount_index_roots_and_skip_remote_or_missing(tmp_path: Path) -> None:
    index = tmp_path / "pypi" / "simple"
    index.mkdir(parents=True)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("torch<=2.14.1\n")
    options = {
        # a PEP 503 file index links to ../../files/: its root must be mounted, not only simple/
        "extra-index-url": f"file://{index} https://mirror.example/simple",
        "find-links": f"{wheels} {tmp_path / 'missing'}",
        "constraint": str(constraints),
        "default-timeout": "180",
    }
    assert local_paths(options) == [tmp_path / "pypi", wheels, constraints]


def test_written_pip_conf_round_trips(tmp_path: Path) -> None:
    import configparser

    options = {"extra-index-url": "file:///a/simple file:///b/simple", "cert": "/etc/ssl/certs/ca-certificates.crt"}
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(write_pip_conf(options, tmp_path))
    assert dict(cfg["global"]) == options


# ------------------------------------------------------------------------------------------------
# the Kafka stand-in: docker-compose.yml's kafka-init command, verbatim, against a real Tansu
# ------------------------------------------------------------------------------------------------


def _topics(bootstrap: str) -> dict[str, int]:
    out = subprocess.run(
        [str(tansu_binary()), "topic", "list", "--broker", f"tcp://{bootstrap}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return {t["name"]: len(t["partitions"]) for t in json.loads(out.stdout)}


def test_kafka_init_command_runs_on_the_tansu_standin(tmp_path: Path) -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text(encoding="utf-8"))
    script = compose["services"]["kafka-init"]["command"][0].replace("$$", "$")  # compose escaping
    expected = {
        m.group(1): int(m.group(2)) for m in re.finditer(r"--topic (\S+) --partitions (\d+)", script)
    }  # fmt: skip
    assert len(expected) == 5  # in, tags, dlq, tag-feedback, review
    # /opt/kafka/bin in the stand-in image: the shims and `tansu` on PATH
    bin_dir = tmp_path / "opt" / "kafka" / "bin"
    bin_dir.mkdir(parents=True)
    for shim in STANDINS.glob("*.sh"):
        (bin_dir / shim.name).write_text(
            shim.read_text(encoding="utf-8").replace("#!/usr/bin/env python3", f"#!{sys.executable}", 1)
        )
        (bin_dir / shim.name).chmod(0o755)
    (tmp_path / "tansu").symlink_to(tansu_binary())
    broker = start_tansu(log_dir=tmp_path)
    try:
        bootstrap = broker.url
        env = dict(os.environ, PATH=f"{tmp_path}:{os.environ['PATH']}")
        probe = compose["services"]["kafka"]["healthcheck"]["test"][1]
        health = subprocess.run(
            ["/bin/sh", "-c", probe.replace("/opt/kafka/bin", str(bin_dir)).replace("localhost:9092", bootstrap)],
            env=env,
            timeout=30,
            check=False,
        )
        assert health.returncode == 0
        local = script.replace("/opt/kafka/bin", str(bin_dir)).replace("B=kafka:9092", f"B={bootstrap}")
        for _ in range(2):  # the second run exercises --if-not-exists
            run = subprocess.run(["/bin/sh", "-c", local], env=env, capture_output=True, text=True, timeout=60)
            assert run.returncode == 0, run.stderr
        assert set(expected) <= set(run.stdout.split())
        topics = _topics(bootstrap)
        assert {name: topics.get(name) for name in expected} == expected
    finally:
        broker.stop()


def test_broker_health_shim_fails_when_nothing_listens(tmp_path: Path) -> None:
    from scripts.local_services import free_port

    shim = STANDINS / "kafka-broker-api-versions.sh"
    run = subprocess.run(
        [sys.executable, str(shim), "--bootstrap-server", f"127.0.0.1:{free_port()}"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert run.returncode == 1 and "unreachable" in run.stderr


# ------------------------------------------------------------------------------------------------
# slow: the real thing (podman; root; minutes)
# ------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux") or os.geteuid() != 0, reason="podman builds here need root")
def test_make_images_and_compose_smoke() -> None:
    make = shutil.which("make")
    if make is None:
        pytest.skip("no make")
    images = subprocess.run([make, "-C", str(REPO), "images"], capture_output=True, text=True, timeout=3600)
    assert images.returncode == 0, images.stdout[-3000:] + images.stderr[-3000:]
    assert re.search(r"localhost/product-tagger:worker\s+\d+ MB", images.stdout)
    assert "worker image: no torch" in images.stdout
    smoke = subprocess.run([make, "-C", str(REPO), "compose-smoke"], capture_output=True, text=True, timeout=3600)
    assert smoke.returncode == 0, smoke.stdout[-3000:] + smoke.stderr[-3000:]
    tagged = re.search(r"worker: (\d+)/(\d+) tag events read back", smoke.stdout)
    assert tagged and tagged.group(1) == tagged.group(2) != "0"
    assert "drained (consumed" in smoke.stdout

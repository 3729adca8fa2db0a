#!/usr/bin/env python3
"""The part of Apache Kafka's kafka-topics.sh that docker-compose.yml's kafka-init uses, on Tansu.

Stand-in only (deploy/standins.Dockerfile): --create [--if-not-exists] --topic T --partitions N,
and --list. Replication factors are accepted and ignored (Tansu is one node).
"""

import argparse
import json
import socket
import subprocess
import sys
import time

ATTEMPTS = 5


def broker_url(bootstrap: str) -> str:
    """tcp://IP:PORT: the name is resolved here (glibc, retried) because tansu's static musl resolver
    fails intermittently against the compose network's DNS ("Name does not resolve")."""
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    for attempt in range(ATTEMPTS):
        try:
            return f"tcp://{socket.gethostbyname(host)}:{port}"
        except OSError:
            if attempt == ATTEMPTS - 1:
                raise
            time.sleep(1)
    raise AssertionError("unreachable")


def tansu(*args: str) -> subprocess.CompletedProcess:
    """Run a tansu CLI command, retrying transient failures."""
    for _ in range(ATTEMPTS - 1):
        proc = subprocess.run(["tansu", *args], capture_output=True, text=True)
        if proc.returncode == 0 or "already exists" in proc.stdout + proc.stderr:
            break
        time.sleep(1)
    else:
        proc = subprocess.run(["tansu", *args], capture_output=True, text=True)
    sys.stderr.write((proc.stdout + proc.stderr) if proc.returncode else "")
    return proc


def topics(broker: str) -> list[str]:
    out = tansu("topic", "list", "--broker", broker)
    if out.returncode != 0:
        raise SystemExit(out.returncode)
    return sorted(t["name"] for t in json.loads(out.stdout or "[]"))


def main() -> int:
    p = argparse.ArgumentParser(prog="kafka-topics.sh (Tansu stand-in)")
    p.add_argument("--bootstrap-server", required=True)
    p.add_argument("--create", action="store_true")
    p.add_argument("--list", action="store_true")
    p.add_argument("--if-not-exists", action="store_true")
    p.add_argument("--topic")
    p.add_argument("--partitions", type=int, default=1)
    p.add_argument("--replication-factor", type=int, default=1)
    args = p.parse_args()
    broker = broker_url(args.bootstrap_server)
    if args.create:
        if not args.topic:
            p.error("--create needs --topic")
        made = tansu("topic", "create", args.topic, "--partitions", str(args.partitions), "--broker", broker)
        if made.returncode != 0 and not (args.if_not_exists and args.topic in topics(broker)):
            return made.returncode
        print(f"Created topic {args.topic}." if made.returncode == 0 else f"Topic {args.topic} exists.")
    if args.list:
        print("\n".join(topics(broker)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

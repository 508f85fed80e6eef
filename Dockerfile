# syntax=docker/dockerfile:1
#
# One image for every Vigil component; the first argument picks it:
#   docker build -t vigil .
#   docker run --rm -v "$PWD/examples:/etc/vigil:ro" vigil check /etc/vigil/compose.yaml
#   docker run ... vigil scheduler --config /etc/vigil/compose.yaml
#   docker run ... vigil events --config /etc/vigil/compose.yaml
#   vigil ca bundle minion --location paris --system-id paris-1 \
#       --nats tls://nats.example.net:4222 --scheduler scheduler.example.net:50051 --out paris-1
#   docker run ... --user "$(id -u)" -v "$PWD/paris-1:/etc/vigil/bundle:ro" \
#       vigil minion --bundle /etc/vigil/bundle      # the key is 0600: run as its owner
# Connection settings come from VIGIL_* variables (docs/configuration.md);
# docker-compose.yml shows a complete deployment, TLS on every link
# (docs/security.md).
#
# No HEALTHCHECK here: the three components need different probes and a minion
# listens on no port at all. docker-compose.yml probes the scheduler's and the
# event service's /healthz (on their metrics address) instead.

ARG PYTHON_IMAGE=python:3.11-slim

# --- build: a virtualenv in /opt/vigil holding Vigil and its dependencies ---
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/vigil
ENV PATH=/opt/vigil/bin:$PATH
WORKDIR /src

# Dependencies first (pyproject.toml pinned by constraints.txt): this layer is
# rebuilt only when one of those two files changes, not on every code change.
COPY pyproject.toml constraints.txt ./
RUN python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
        > /tmp/requirements.txt \
 && pip install -c constraints.txt -r /tmp/requirements.txt

# Then Vigil itself: a regular (not editable) install of the packages found
# under . and protos/ (services, minion, vigil.v1), with migrations and protos.
# A monitor that cannot be imported (a dependency missing from pyproject.toml)
# fails the build here rather than the containers at start-up.
COPY . .
RUN pip install -c constraints.txt . \
 && vigil --help > /dev/null \
 && python -I -c 'from minion.monitors import registry; [registry.monitor_class(m) for m in registry.available()]'

# --- runtime: the virtualenv and a non-root user, nothing else ---
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="vigil" \
      org.opencontainers.image.description="Vigil service-assurance poller: scheduler, event service, minion" \
      org.opencontainers.image.licenses="Apache-2.0"

# /var/lib/vigil is the working directory: relative paths of the defaults land
# there (.vigil/minion-id, sqlite:///.vigil/*.db when no database URL is set).
# /var/lib/vigil/ca (the CA), /etc/vigil/pki (certificates the services read)
# and /var/lib/vigil/.vigil (state, such as the event service's key for hook
# secrets) are mount points for docker-compose.yml's volumes: created here, owned by
# vigil, so that a new named volume takes that ownership and `vigil ca` can
# write to it without root.
RUN groupadd --system --gid 10001 vigil \
 && useradd --system --uid 10001 --gid vigil --no-create-home \
        --home-dir /var/lib/vigil --shell /usr/sbin/nologin vigil \
 && install -d -o vigil -g vigil -m 0750 /var/lib/vigil \
 && install -d -m 0755 /etc/vigil \
 && install -d -o vigil -g vigil -m 0700 /var/lib/vigil/ca \
 && install -d -o vigil -g vigil -m 0750 /etc/vigil/pki \
 && install -d -o vigil -g vigil -m 0700 /var/lib/vigil/.vigil

COPY --from=build /opt/vigil /opt/vigil
ENV PATH=/opt/vigil/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /var/lib/vigil
USER 10001:10001

# scheduler gRPC, event service gRPC, scheduler metrics, event service metrics.
# Each binds 127.0.0.1 unless told otherwise (VIGIL_*_LISTEN=0.0.0.0:port).
EXPOSE 50051 50052 9464 9465

ENTRYPOINT ["vigil"]
CMD ["--help"]

# syntax=docker/dockerfile:1
# redraft's container image: `redraft serve --transport http` on port 8000, as a non-root user.
#
#   docker build -t redraft .
#   docker run -p 127.0.0.1:8000:8000 -e OPENAI_API_KEY=sk-... redraft        # SQLite in the /data volume
#
# compose.yaml runs two replicas on PostgreSQL 16 and Redis 7 (see README, "Run it in containers").
# Two stages: the first builds the virtual environment, the second carries only that environment and the Python
# runtime -- no compiler, no pip cache, no source tree. Every dependency ships wheels, so nothing is compiled.

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/redraft
COPY pyproject.toml README.md LICENSE ./
# redraft/graph, redraft/nodes and redraft/server are symlinks to the top-level folders
COPY redraft ./redraft
COPY graph ./graph
COPY nodes ./nodes
COPY server ./server
RUN /opt/redraft/bin/pip install --no-compile . \
    && /opt/redraft/bin/redraft --version

FROM python:${PYTHON_VERSION}-slim AS runtime
LABEL org.opencontainers.image.title="redraft" \
      org.opencontainers.image.description="Draft -> critique -> revise with durable checkpoints, served over MCP" \
      org.opencontainers.image.licenses="MIT"
RUN groupadd --system --gid 10001 redraft \
    && useradd --system --uid 10001 --gid redraft --home-dir /data --no-create-home --shell /usr/sbin/nologin redraft \
    && mkdir /data \
    && chown redraft:redraft /data
COPY --from=build /opt/redraft /opt/redraft
ENV PATH=/opt/redraft/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    REDRAFT_HOST=0.0.0.0 \
    REDRAFT_PORT=8000 \
    REDRAFT_DATABASE_URL=/data/redraft.sqlite
WORKDIR /data
VOLUME ["/data"]
USER 10001:10001
EXPOSE 8000
# /healthz: the process is alive and serving (no auth, nothing secret). /readyz (database, migrations, Redis, not
# draining) is for load balancers: a draining replica answers 503 there while its steps finish.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('REDRAFT_PORT', '8000'), timeout=2)"]
# SIGTERM drains (server/drain.py): no new work, the steps in flight finish for up to REDRAFT_DRAIN_SECONDS (30),
# runs and leases go back to the other replicas, exit 0. Give `docker stop` / compose a longer grace than that.
STOPSIGNAL SIGTERM
ENTRYPOINT ["redraft"]
CMD ["serve", "--transport", "http"]

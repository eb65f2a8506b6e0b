# The engine as a container: `docker compose up` runs it beside PostgreSQL 16 (docker-compose.yml).
# Two stages: the first installs the engine and its dependencies into a virtualenv (every
# dependency ships manylinux wheels, so no compiler is needed); the second copies only that
# virtualenv onto a fresh slim image and runs it as an unprivileged user.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/engine
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN /opt/engine/bin/pip install --no-cache-dir .

FROM python:3.11-slim
ENV PATH=/opt/engine/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    ENERGY_DATA_DIR=/data
# The data directory belongs to the engine's user: a named volume mounted on /data starts as a
# copy of it, ownership included, so the first `serve` can write <data_dir>/admin.key there.
RUN useradd --system --uid 10001 --user-group --home-dir /data --create-home engine
COPY --from=build /opt/engine /opt/engine
USER 10001:10001
WORKDIR /data
EXPOSE 8000
# The slim image has no curl: Python asks. /health/live: the process answers (a database
# outage is not a reason to replace the container; compose asks /health/ready instead).
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health/live', timeout=2)"]
ENTRYPOINT ["energy-engine"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]

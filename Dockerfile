# One image for every Crucible service in docker-compose.yml: the Prefect server, the scheduled pipeline, the
# dashboard, and the pydoc site the compose config crawls.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DO_NOT_TRACK=1 PREFECT_SERVER_ANALYTICS_ENABLED=false PREFECT_HOME=/data/prefect

WORKDIR /app
# torch from PyTorch's CPU index: the PyPI wheel of the same version pulls gigabytes of CUDA libraries.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY flows ./flows
COPY tasks ./tasks
COPY model ./model
COPY warehouse ./warehouse
COPY configs ./configs
RUN pip install . && useradd --create-home --uid 1000 crucible && mkdir -p /data /warehouse /prefect \
    && chown crucible /data /warehouse /prefect
USER crucible
CMD ["crucible", "--help"]

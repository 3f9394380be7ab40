# The partner-matching service: the Flask API under gunicorn, the model shipped in a pip package (works offline).
#
#   docker build -t matcher .
#   docker run --rm -p 8000:8000 -v matcher-data:/data matcher
#
# Settings are the MATCHER_* environment variables (see the README), e.g. -e MATCHER_WORKERS=4,
# -e MATCHER_LOAD_DEMO=0 (the demo data is loaded into an empty store unless that is set),
# -e MATCHER_DB_URL=postgresql+psycopg://... (the psycopg driver is in requirements.txt).
# gunicorn may face clients directly: its workers (service/http_edge.py) read each request whole before a thread
# serves it, so slow clients hold no thread (MATCHER_THREADS, MATCHER_READ_TIMEOUT); terminate TLS in front.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# libgomp1: the OpenMP runtime the CPU kernels of faiss-cpu and torch use (python:3.11-slim lacks it).
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app

# torch stays pinned at 2.13.0 as in requirements.txt. On a machine where pip would otherwise pick a CUDA build
# of torch (Linux x86_64 from PyPI pulls the CUDA one and its nvidia-* packages), add the CPU wheel index:
#   pip install --extra-index-url https://download.pytorch.org/whl/cpu -r requirements.txt
# which this build does when given  --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# (torch==2.13.0 then matches the 2.13.0+cpu wheel).
ARG TORCH_INDEX_URL=
COPY requirements.txt ./
RUN pip install ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} -r requirements.txt

COPY models/ models/
COPY matcher/ matcher/
COPY service/ service/

ENV PYTHONPATH=/app \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false \
    MATCHER_HOST=0.0.0.0 \
    MATCHER_PORT=8000 \
    MATCHER_DATA_DIR=/data \
    MATCHER_MODELS_DIR=/opt/matcher-models \
    GUNICORN_CMD_ARGS="--worker-tmp-dir /dev/shm"

# Fail the build, not the first start, when the packaged model cannot be loaded offline; and export it to ONNX
# here (matcher/onnx_export.py: checked against torch), into the image, so that no start has to.
RUN python -c "from matcher.encoder import Encoder; e = Encoder(); assert e.encode(['ok']).shape == (1, e.dim); \
assert e.runtime == 'onnx', 'the ONNX export failed: see the log'; print('model ok:', e.name, e.runtime)"

# A non-root user owning only the data folder (the SQLite store and the index snapshots).
RUN groupadd --system --gid 10001 matcher \
    && useradd --system --uid 10001 --gid matcher --create-home --home-dir /home/matcher matcher \
    && mkdir -p /data \
    && chown matcher:matcher /data \
    && chown -R matcher:matcher /opt/matcher-models
USER matcher
VOLUME /data
EXPOSE 8000

# /healthz: the process answers (readiness, with the indexes in sync, is /readyz).
HEALTHCHECK --interval=30s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('MATCHER_PORT', '8000'), timeout=4)"]

# Create the store (and load the demo data into an empty one unless MATCHER_LOAD_DEMO=0), then serve;
# exec makes gunicorn PID 1's process so that `docker stop` (SIGTERM) shuts it down gracefully.
CMD ["sh", "-c", "python -m matcher init && exec gunicorn -c service/gunicorn_conf.py \"service:create_app()\""]

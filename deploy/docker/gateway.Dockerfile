# The gateway (and the fleet server): Python with its request path compiled by mypyc, no llama.cpp,
# no model. From the repo root:
#   docker build -f deploy/docker/gateway.Dockerfile -t edgecloud/gateway:0.1.0 .
# Multi-arch (the arm64 half installs wheels and compiles the request path, minutes under QEMU):
#   docker buildx build --platform linux/amd64,linux/arm64 -f deploy/docker/gateway.Dockerfile \
#     -t REGISTRY/edgecloud/gateway:0.1.0 --push .
# Run the fleet server from the same image: `edgecloud fleet serve ...`.
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
# A C compiler for the compiled request path (edgecloud/compiled.py); the image does not keep it.
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml requirements.lock ./
# Runtime dependencies pinned by the lock, less the inference engine and the model.
RUN python -c "import tomllib; d = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; print('\n'.join(x for x in d if not x.startswith(('gemma3-270m', 'llama-cpp-python'))))" > /tmp/runtime.txt \
    && pip install -c requirements.lock -r /tmp/runtime.txt
COPY edgecloud ./edgecloud
# Installed, then its request path compiled in place by mypyc (pinned by the lock, kept out of
# the image): about a third less CPU per request than the plain sources.
RUN touch README.md && pip install --no-deps . \
    && pip install -c requirements.lock --target /tmp/mypyc mypy setuptools \
    && cd / && PYTHONPATH=/tmp/mypyc python -m edgecloud.native_build \
    && python -m edgecloud.native_build --status | grep -q "in use" \
    && rm -rf /tmp/mypyc /opt/venv/lib/python*/site-packages/pip /opt/venv/bin/pip*

FROM python:${PYTHON_VERSION}-slim-bookworm
RUN useradd --uid 10001 --user-group --no-create-home --home-dir /tmp edgecloud
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 HOME=/tmp
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"
ENTRYPOINT ["edgecloud"]
# Off loopback the gateway refuses to start without auth.keys in its config (no open relay):
# add keys, or append "--allow-anonymous" only behind an authenticating proxy.
CMD ["gateway", "--host", "0.0.0.0", "--port", "8080", "--config", "/etc/edgecloud/gateway.yaml"]

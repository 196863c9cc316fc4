# compress: x86-64 CPU image by default.
#   docker build -t compress .
#   docker run --rm -v "$PWD/runs:/work/runs" compress examples/quickstart.yaml --target jetson
# Jetson (JetPack 6, L4T r36) image: the base already carries CUDA, cuDNN, TensorRT and a matching torch.
#   docker build --build-arg BASE=nvcr.io/nvidia/l4t-jetpack:r36.4.0 --build-arg TORCH_SPEC= -t compress:jetson .
ARG BASE=python:3.11-slim
FROM ${BASE}

# CPU wheel of torch by default; empty on Jetson, whose base image provides torch.
ARG TORCH_SPEC="torch==2.13.0"
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

ENV PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /opt/compress

# TORCH_SPEC carries the pinned version (hadolint cannot see through the variable)
# hadolint ignore=DL3013
RUN if [ -n "${TORCH_SPEC}" ]; then pip install --index-url "${TORCH_INDEX}" "${TORCH_SPEC}"; fi
COPY pyproject.toml README.md ./
COPY compress ./compress
COPY export ./export
COPY targets ./targets
COPY examples ./examples
RUN pip install .

RUN useradd --create-home --uid 1000 compress && mkdir -p /work && cp -r /opt/compress/examples /work/examples \
    && chown -R compress /work
USER 1000
WORKDIR /work
ENTRYPOINT ["compress"]
CMD ["--help"]

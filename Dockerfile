# gdws-export benchmark image for x86-64 machines with an NVIDIA GPU.
#
# TensorRT engines only run on the GPU model and TensorRT version that built them, so this image
# builds them where it runs:
#   docker build -t gdws-export .
#   docker run --rm --gpus all --user "$(id -u):$(id -g)" -v "$PWD/out:/out" gdws-export bench vgg16.pt
# Jetson: docker/Dockerfile.jetson. Pinned versions and how to bump them: docker/README.md.

# NVIDIA's TensorRT container: TensorRT 11.2 with its Python bindings, CUDA 13, Python 3.12.
ARG TENSORRT_IMAGE=nvcr.io/nvidia/tensorrt:26.08-py3

FROM ${TENSORRT_IMAGE} AS runtime

# PyTorch for the CUDA 13 driver stack of the base image (the wheel brings its own CUDA libraries).
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130

# The base image's Python is the system one (PEP 668); this container is its only user, and
# TensorRT's bindings live in it, so packages go there too.
ENV PIP_BREAK_SYSTEM_PACKAGES=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    MPLBACKEND=Agg \
    MPLCONFIGDIR=/tmp/matplotlib \
    XDG_CACHE_HOME=/tmp/.cache

# torch first, from PyTorch's index: resolved later as a plain dependency, pip could pick
# another build. The constraint keeps it when the package is installed.
RUN python3 -m pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}" \
    && printf 'torch==%s\n' "${TORCH_VERSION}" > /etc/pip-constraints.txt

WORKDIR /opt/gdws-export
COPY pyproject.toml README.md ./
COPY gdws_export ./gdws_export

# Installed without the [trt] extra: TensorRT is the base image's own install, and the extra's
# `tensorrt` requirement could make pip fetch a second, different TensorRT from PyPI. The check
# below fails the build if the bindings are not importable.
RUN python3 -m pip install --constraint /etc/pip-constraints.txt . \
    && python3 -c "import tensorrt, torch, gdws_export.cli.container; \
print('TensorRT', tensorrt.__version__, '| torch', torch.__version__, 'CUDA', torch.version.cuda)"

# Outputs, TensorRT timing caches and compiled torch kernels go to /out, a mounted volume.
# A fixed non-root user; `--user "$(id -u):$(id -g)"` makes the files yours on the host.
RUN groupadd --gid 10001 gdws \
    && useradd --no-log-init --create-home --uid 10001 --gid 10001 --shell /bin/bash gdws \
    && mkdir -p /out /work \
    && chown 10001:10001 /out /work
USER 10001:10001
WORKDIR /work
VOLUME ["/out"]

ENTRYPOINT ["python3", "-m", "gdws_export.cli.container"]
CMD ["help"]

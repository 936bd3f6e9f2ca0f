# lmforge trainer service. A CUDA base by default; the CPU variant:
#   docker build -f docker/trainer.Dockerfile --build-arg BASE=debian:bookworm-slim \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu --build-arg VLLM=cpu -t lmforge-trainer:cpu .
# No secrets are baked in: keys and certificates are mounted at run time. State lives in /data (a volume;
# the checkpoint store is /data/store, shared with the other service).
ARG BASE=nvidia/cuda:12.8.1-runtime-ubuntu22.04
FROM ${BASE}
ARG TORCH_INDEX_URL=""
ARG VLLM=none
ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 LMFORGE_HOME=/data LMFORGE_STORE=/data/store \
    TORCH_INDEX_URL=${TORCH_INDEX_URL} LMFORGE_SETUP_VLLM=${VLLM}
COPY . /opt/lmforge
RUN /opt/lmforge/docker/install.sh
USER lmforge
WORKDIR /opt/lmforge
EXPOSE 50051 9400
HEALTHCHECK --interval=15s --timeout=10s --start-period=120s \
    CMD ["/opt/lmforge/.venv/bin/python", "-m", "services.common.health_probe", "127.0.0.1:50051", "lmforge.v1.TrainerService"]
ENTRYPOINT ["/opt/lmforge/docker/entrypoint.sh"]
CMD ["/opt/lmforge/.venv/bin/lmforge-trainer", "--host", "0.0.0.0", "--port", "50051", "--home", "/data/trainer", "--metrics-port", "9400"]

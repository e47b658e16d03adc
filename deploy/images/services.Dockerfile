# hearth/services: PostgreSQL and Redis from Debian's packages, on Hearth's base image (no
# hub). `make stack-images` builds it; deploy/compose.yaml and deploy/k8s run it as
# `hearth-postgres` and `hearth-redis`.
ARG HEARTH_BASE_IMAGE=hearth/base:bookworm-py3.11
FROM ${HEARTH_BASE_IMAGE}
RUN apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        postgresql redis-server \
    && rm -rf /var/lib/apt/lists/*
COPY hearth-postgres hearth-redis /usr/local/bin/

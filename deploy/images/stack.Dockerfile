# hearth/stack: MLflow's server and Prefect's server and worker (Hearth's locked versions),
# on Hearth's base image (no hub). `make stack-images` builds it with the build context at
# the repository root; constraints.txt is requirements.lock without its hashes.
ARG HEARTH_BASE_IMAGE=hearth/base:bookworm-py3.11
FROM ${HEARTH_BASE_IMAGE}
ENV PATH=/opt/hearth/bin:$PATH PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
COPY constraints.txt /tmp/constraints.txt
RUN python3 -m venv /opt/hearth \
    && pip install -q -c /tmp/constraints.txt mlflow prefect "psycopg[binary]" asyncpg \
    && rm /tmp/constraints.txt

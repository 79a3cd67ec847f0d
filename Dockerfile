# ematix-flow: one image for every role of a mesh: flow-worker, the flow CLI (submitter, data generation)
# and the one-shot certificate set-up. See docker-compose.yml and "Deploy with Docker" in README.md.
#
#   docker build -t ematix-flow:local .
#   docker run --rm ematix-flow:local flow --help
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore

# The package and its runtime dependencies only (no dev extras), at the versions of requirements-lock.txt
# (the build tools too), then the two deployment helpers. Only these paths are in the build context:
# see .dockerignore.
COPY pyproject.toml README.md requirements-lock.txt /tmp/src/
COPY ematix_flow /tmp/src/ematix_flow
COPY deploy/healthcheck.py /usr/local/bin/flow-healthcheck
COPY deploy/init_certs.py /usr/local/bin/flow-init-certs
RUN pip install --no-cache-dir --constraint /tmp/src/requirements-lock.txt pip setuptools wheel \
    && pip install --no-cache-dir --constraint /tmp/src/requirements-lock.txt --no-build-isolation /tmp/src \
    && rm -rf /tmp/src \
    && chmod 0755 /usr/local/bin/flow-healthcheck /usr/local/bin/flow-init-certs \
    && flow --version && flow-worker --help > /dev/null

# An unprivileged user owns the mount points, so the named volumes compose creates there start out
# owned by it too: certificates (/ca private to the set-up, /certs for the peers), data, task outputs.
RUN groupadd --system --gid 10001 flow \
    && useradd --system --uid 10001 --gid flow --home-dir /home/flow --create-home \
        --shell /usr/sbin/nologin flow \
    && install -d -o flow -g flow -m 0700 /ca /certs /work \
    && install -d -o flow -g flow -m 0755 /data

USER 10001:10001
WORKDIR /home/flow
EXPOSE 50051

# Each container says what to run (docker-compose.yml); alone, the image shows the worker's options.
CMD ["flow-worker", "--help"]

# operator-engine: the operator, and the configure / publish pod programs
# (`operator-engine configure`, `operator-engine publish`) in the same image.
FROM python:3.11-slim

# PYTHONPATH puts the source tree below ahead of the installed copy, so that
# code edited in the pod (development mode, see the end) is what runs.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/operator_engine

WORKDIR /operator_engine

RUN groupadd --system --gid 10001 ocean \
    && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
       --shell /usr/sbin/nologin ocean

# Pinned dependencies first, so this layer is cached across code changes. The
# runtime set only: the [dev] extra (requirements_dev_extra.txt: KMock and what
# only the embedded cluster and the demo use) is not installed.
COPY requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt

COPY pyproject.toml README.md ./
# Owned by the runtime user only so that development mode can edit it; the
# Deployment (kubernetes/operator.yml) mounts the root filesystem read-only.
COPY --chown=10001:10001 operator_engine ./operator_engine
RUN pip install --no-cache-dir .

# Never root. Secrets (OPERATOR_PRIVATE_KEY, AWS_*, IPFS_API_*) come from a
# Kubernetes Secret at run time, never from the image.
USER 10001:10001

EXPOSE 8080 9100

CMD ["kopf", "run", "--standalone", "--namespace=ocean-compute", "--liveness=http://0.0.0.0:8080/healthz", "-m", "operator_engine.operator_main"]
# Development mode: swap the CMD above for the one below and publish the
# image. The pod then starts without the operator, so you can
# `kubectl exec -it <pod> -- bash` into it, change code or settings (with
# readOnlyRootFilesystem: false in the Deployment), and start and stop the
# operator as often as you like, from /operator_engine, with
#   kopf run --standalone operator_engine/operator_main.py
# CMD ["tail", "-f", "/dev/null"]

#!/usr/bin/env bash
# Build the Lifeboat image (`make image`, and tests/integration/test_image.py): a wheelhouse of this tree
# and its pinned dependencies (constraints.txt) in build/wheels, then deploy/docker/Dockerfile on it.
# Environment: IMAGE (the tag, default lifeboat:0.1.0), BASE_IMAGE (default python:3.11-slim-bookworm),
# PYTHON (a Python 3.11 with pip, the image's version: default python3), ENGINE (default docker, else
# podman; may carry options, e.g. "podman --runtime /usr/bin/runc").
set -euo pipefail
cd "$(dirname "$0")/../.."
IMAGE=${IMAGE:-lifeboat:0.1.0}
BASE_IMAGE=${BASE_IMAGE:-python:3.11-slim-bookworm}
PYTHON=${PYTHON:-python3}
ENGINE=${ENGINE:-$(command -v docker || command -v podman || true)}
if [ -z "$ENGINE" ]; then
  echo "error: neither docker nor podman is installed: install one (apt-get install podman runc), or set ENGINE" >&2
  exit 1
fi
version=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ "$version" != "3.11" ]; then
  echo "error: $PYTHON is Python $version; the wheelhouse must match the image's Python 3.11: set PYTHON=python3.11" >&2
  exit 1
fi
rm -rf build/wheels
"$PYTHON" -m pip wheel --quiet --disable-pip-version-check --wheel-dir build/wheels --constraint deploy/docker/constraints.txt .
# shellcheck disable=SC2086  # ENGINE may carry options
$ENGINE build --file deploy/docker/Dockerfile --build-arg BASE_IMAGE="$BASE_IMAGE" --tag "$IMAGE" .

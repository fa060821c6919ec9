#!/bin/sh
# The image's install steps. deploy/Dockerfile runs them, and tests/deploy/test_image.py runs
# the very same file in a temporary virtualenv, so the two cannot drift apart.
#
#   install.sh deps    VENV SRC   VENV gets the locked runtime dependencies (SRC/requirements.lock)
#   install.sh project VENV SRC   build payhook's wheel from SRC with the locked build backend
#                                 (SRC/requirements-build.lock) and add it to VENV, --no-deps
#
# Every file pip installs here is checked against a sha256 in a lock (--require-hashes), and
# only wheels are accepted (--only-binary), so nothing is compiled and no unpinned build
# dependency is fetched. PYTHON picks the interpreter (default python3).
set -eu
step=$1
venv=$2
src=$3
python=${PYTHON:-python3}

case $step in
deps)
    "$python" -m venv "$venv"
    # No --no-deps here: pip then refuses a lock that misses a dependency (it has no hash).
    "$venv/bin/pip" install --require-hashes --only-binary=:all: -r "$src/requirements.lock"
    ;;
project)
    build=$(mktemp -d)
    "$python" -m venv "$build/venv"
    "$build/venv/bin/pip" install --require-hashes --only-binary=:all: \
        -r "$src/requirements-build.lock"
    "$build/venv/bin/pip" wheel --no-deps --no-build-isolation --wheel-dir "$build/dist" "$src"
    "$venv/bin/pip" install --no-deps "$build"/dist/payhook-*.whl
    rm -rf "$build"
    # The locked set satisfies what the wheel declares.
    "$venv/bin/pip" check
    ;;
*)
    echo "usage: install.sh deps|project VENV SRC" >&2
    exit 2
    ;;
esac

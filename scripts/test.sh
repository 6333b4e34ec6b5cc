#!/usr/bin/env bash
# The test suite (CPU only), after setting up .venv if needed: bash scripts/test.sh [pytest options].
# One pytest worker per core (pytest-xdist), each test file on one worker so that its fixtures are
# built once; the tests' training runs are single-threaded subprocesses.
set -euo pipefail
source "$(dirname "$0")/setup.sh"
cd "$REPO"
python -m pytest -q -n auto --dist loadfile tests "$@"

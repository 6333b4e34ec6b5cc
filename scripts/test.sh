#!/usr/bin/env bash
# The test suite (CPU only), after setting up .venv if needed: bash scripts/test.sh [pytest options]
set -euo pipefail
source "$(dirname "$0")/setup.sh"
cd "$REPO"
python -m pytest -q tests "$@"

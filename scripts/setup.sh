# Sets up the project's virtual environment .venv when it is missing or requirements.txt changed
# since it was made, then activates it. Sourced by quickstart.sh and test.sh, so that both work in a
# fresh clone without any activation; run on its own (bash scripts/setup.sh) it only installs.
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ "${DRY_RUN:-0}" = 1 ]; then return 0 2>/dev/null || exit 0; fi  # common.sh's DRY_RUN: print commands only
VENV="$REPO/.venv"
STAMP="$VENV/requirements.sha256"
WANT="$(sha256sum "$REPO/requirements.txt" | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
    echo "setting up $VENV from requirements.txt (once; a few minutes)"
    "${PYTHON:-python3}" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q -r "$REPO/requirements.txt"
    echo "$WANT" > "$STAMP"
fi
. "$VENV/bin/activate"

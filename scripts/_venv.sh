# Sourced by the other scripts: make sure ./.venv exists and has imagesync (editable) with its extras.
set -euo pipefail
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$top"
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || { echo "imagesync needs Python 3.11 or newer ($python is $("$python" --version 2>&1))" >&2; exit 2; }
  "$python" -m venv .venv
fi
extras=${IMAGESYNC_EXTRAS:-dev}
stamp=".venv/.installed-$extras"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[$extras]"
  touch "$stamp"
fi
export PATH="$top/.venv/bin:$PATH"

#!/usr/bin/env bash
# The mutation run of issue 17, outside CI (about 45 minutes on 2 cores):
#   bash tools/mutation/run.sh            # then: cd "$WORK" && mutmut results
# It copies the repository to a scratch folder, adds mutmut's settings
# (mutmut.toml: which modules are mutated, which tests run), installs mutmut 3
# in a venv beside the project's own packages, and runs it. mutfix.py makes
# OpenCV and torch single-threaded: mutmut forks each test run, and forked
# processes hung on the parent's thread pools.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
WORK="${WORK:-$(mktemp -d)/mut}"
mkdir -p "$WORK"
cp -r "$ROOT"/face_segmentation_pytorch "$ROOT"/tests "$ROOT"/setup.py "$ROOT"/pyproject.toml "$WORK"/
cat "$ROOT"/tools/mutation/mutmut.toml >> "$WORK"/pyproject.toml
cp "$ROOT"/tools/mutation/mutfix.py "$WORK"/
python3 -m venv --system-site-packages "$WORK"/.venv
"$WORK"/.venv/bin/pip install -q "mutmut>=3,<4" -r "$ROOT"/requirements-cpu.txt -r "$ROOT"/requirements-test.txt
cd "$WORK"
PYTHONPATH="$WORK" .venv/bin/mutmut run
.venv/bin/mutmut results
echo "work folder: $WORK"

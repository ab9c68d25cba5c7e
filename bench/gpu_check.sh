#!/usr/bin/env bash
# The one script to run on a lent CUDA GPU machine (about 5 minutes; see bench/gpu_check.py for
# what each check asserts). Run from the repository root or anywhere:
#
#   bash bench/gpu_check.sh            # results in $OUT, else bench/gpu_check_out/
#
# Python: .venv/bin/python when it exists and runs, else python3 (then `pip install -e .[dev]`
# quietly when mlsmith or torch does not import; GPU_CHECK_NO_INSTALL=1 skips that). The working
# tree's src/ goes first on PYTHONPATH, so the code under test is this checkout's even when a
# carried venv's editable install points elsewhere.
#
# Environment: OUT (results folder), GPU_CHECK_BUDGET (seconds for all checks, default 300),
# GPU_CHECK_TIMEOUT (hard limit of the whole Python run, default budget + 30),
# GPU_CHECK_NO_INSTALL=1, GPU_CHECK_EXTRAS (default dev), GPU_CHECK_KEEP=1 (keep the temp data),
# GPU_CHECK_ONLY=name,name (run only those rows; the others are reported as skipped).
# Exit status: 1 when any check failed, 124 when the hard limit struck, else 0.
set -uo pipefail

here="$PWD"
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
case "${OUT:-}" in
    "") OUT=bench/gpu_check_out ;;
    /*) ;;
    *) OUT="$here/$OUT" ;;  # relative to where the script was started
esac
BUDGET="${GPU_CHECK_BUDGET:-300}"
LIMIT="${GPU_CHECK_TIMEOUT:-$((${BUDGET%.*} + 30))}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"

imports() { timeout 120 "$1" -c 'import torch, mlsmith' >/dev/null 2>&1; }

if [ -x .venv/bin/python ] && timeout 60 .venv/bin/python -c 'import sys' >/dev/null 2>&1; then
    PY=.venv/bin/python
else
    PY=python3
fi
if ! imports "$PY"; then
    if [ "$PY" != python3 ] && imports python3; then
        echo "gpu_check: $PY cannot import torch and mlsmith; using python3" >&2
        PY=python3
    elif [ "${GPU_CHECK_NO_INSTALL:-0}" != 1 ]; then
        echo "gpu_check: installing mlsmith[${GPU_CHECK_EXTRAS:-dev}] for $PY" >&2
        timeout "${GPU_CHECK_INSTALL_TIMEOUT:-240}" "$PY" -m pip install -q --retries 1 \
            --timeout 15 --disable-pip-version-check -e ".[${GPU_CHECK_EXTRAS:-dev}]" >&2 \
            || echo "gpu_check: the install failed; the checks report what is missing" >&2
    fi
fi
echo "gpu_check: $("$PY" -c 'import sys; print(sys.executable, sys.version.split()[0])')" >&2

keep=()
[ "${GPU_CHECK_KEEP:-0}" = 1 ] && keep=(--keep)
# -k: a Python that ignores SIGTERM is killed 10 s later; the checks' own timeouts come first.
timeout -k 10 "$LIMIT" "$PY" bench/gpu_check.py --out "$OUT" --budget "$BUDGET" ${keep[@]+"${keep[@]}"}

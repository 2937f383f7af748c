#!/usr/bin/env bash
# One entry point for a fresh machine. Creates (or reuses) .venv in the repository root, then:
#   ./run.sh example        run the main job on the built-in example
#   ./run.sh test [ARGS]    run the whole test suite (pytest ARGS)
#   ./run.sh cinema ARGS    run the `cinema` command line
set -euo pipefail
cd "$(dirname "$0")"

stamp=.venv/.cinema-installed
if [ ! -x .venv/bin/python ] || [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    python3 -m venv .venv
    .venv/bin/python -m pip install -q --upgrade pip
    # Install torch first: an open range alone lets pip choose a multi-GB CUDA build.
    # CINEMA_TORCH overrides the pin (e.g. "torch==2.5.1" on a GPU machine).
    .venv/bin/python -m pip install -q "${CINEMA_TORCH:-torch==2.13.0}"
    .venv/bin/python -m pip install -q -e ".[dev]"
    touch "$stamp"
fi

cmd="${1:-example}"
shift || true
case "$cmd" in
    example) exec .venv/bin/cinema example "$@" ;;
    test) exec .venv/bin/python -m pytest "$@" ;;
    cinema) exec .venv/bin/cinema "$@" ;;
    *) echo "usage: ./run.sh example | test [pytest args] | cinema ARGS" >&2; exit 2 ;;
esac

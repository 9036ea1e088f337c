# Sourced by scripts/demo and scripts/test: make sure .venv exists and has the package
# installed with the extras named in $1 ("" for none), then put .venv/bin first on PATH.
#
# The install is skipped when nothing changed since the last one (a stamp file records the
# hash of pyproject.toml and the extras), so a second run starts in well under a second.

_venv_python() {
    # The first interpreter that is Python >= 3.11.
    local candidate
    for candidate in ${PYTHON:-} python3.13 python3.12 python3.11 python3 python; do
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            echo "$candidate"
            return 0
        fi
    done
    echo "error: async-batch-llm needs Python >= 3.11; install it or set PYTHON=/path/to/python3.11" >&2
    return 1
}

_venv_create() {
    local python
    python="$(_venv_python)"
    echo "Creating .venv with $("$python" --version 2>&1) ..."
    rm -rf .venv
    if ! "$python" -m venv .venv 2>/dev/null; then
        # Some distributions ship Python without ensurepip; virtualenv does not need it.
        rm -rf .venv
        "$python" -m pip install -q --user virtualenv
        "$python" -m virtualenv -q .venv
    fi
}

ensure_venv() {
    local extras="${1:-}"
    local target="."
    [[ -n "$extras" ]] && target=".[$extras]"

    if ! .venv/bin/python -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        _venv_create
    fi

    # One line per installed extras set: "<sha256 of pyproject.toml> <extras>".
    local stamp=".venv/.async-batch-llm-installed"
    local want
    want="$(.venv/bin/python - "$extras" <<'PY'
import hashlib
import importlib.util
import sys

with open("pyproject.toml", "rb") as f:
    digest = hashlib.sha256(f.read()).hexdigest()
# Without the package (a removed or broken install) no stamp may match.
installed = importlib.util.find_spec("async_batch_llm") is not None
print(digest if installed else "not-installed", sys.argv[1])
PY
)"
    if ! grep -qxF "$want" "$stamp" 2>/dev/null; then
        echo "Installing async-batch-llm${extras:+ with [$extras]} into .venv ..."
        PIP_DISABLE_PIP_VERSION_CHECK=1 .venv/bin/python -m pip install -q -e "$target"
        .venv/bin/python - "$extras" >>"$stamp" <<'PY'
import hashlib
import sys

with open("pyproject.toml", "rb") as f:
    print(hashlib.sha256(f.read()).hexdigest(), sys.argv[1])
PY
    fi
    export PATH="$PWD/.venv/bin:$PATH"
}

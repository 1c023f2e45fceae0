#!/usr/bin/env bash
# Installs ONNX Runtime's GPU build for `worker -ep cuda` and
# `starter bench -ep cuda`, idempotently, into
# ${DCD_CACHE:-~/.cache/dcd}/ort-gpu-<version>/ (about 300 MB; `make setup`
# leaves it out because only GPU workers need it). From npm, the registry
# every DCD machine reaches:
#   libonnxruntime.so                    onnxruntime-node's Linux x64 core, built with the CUDA provider bridge
#   libonnxruntime_providers_{shared,cuda}.so
#                                        com.github.asus4.onnxruntime.linux-x64-gpu, the onnxruntime-unity
#                                        project's repackaging of the official linux-x64-gpu release
# Both are ONNX Runtime 1.29.0; the CUDA provider needs CUDA 13 (cuBLAS,
# cuRAND, the runtime) and cuDNN 9 on the library path. Prints the
# environment to use.
set -euo pipefail

cache=$(realpath -m -- "${DCD_CACHE:-$HOME/.cache/dcd}") # absolute: go install refuses a relative GOBIN
version=1.29.0
providers_package=com.github.asus4.onnxruntime.linux-x64-gpu@0.4.9
dir="$cache/ort-gpu-$version"

# One setup at a time per cache, setup.sh's lock: two clones would fetch
# and install into the same folder side by side.
mkdir -p "$cache"
exec 9>"$cache/.setup.lock"
if ! flock -n 9; then
  echo "setup-gpu: waiting for another setup of $cache to finish..." >&2
  flock 9
fi

if [ ! -f "$dir/libonnxruntime_providers_cuda.so" ]; then
  echo "setup-gpu: fetching ONNX Runtime $version's GPU build from npm (about 220 MB)..." >&2
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  mkdir -p "$tmp/core" "$tmp/providers" "$dir"
  # npm pack only downloads each tarball (npm checks its integrity); it
  # runs no install script.
  mkdir -p "$cache/logs"
  (cd "$tmp" && npm pack "onnxruntime-node@$version" "$providers_package") >"$cache/logs/ort-gpu-fetch.log" 2>&1 \
    || { tail -20 "$cache/logs/ort-gpu-fetch.log" >&2; exit 1; }
  # The CPU-only core of the same release refuses the CUDA provider ("not
  # enabled in this build"); onnxruntime-node's is built with it.
  tar -xzf "$tmp"/onnxruntime-node-*.tgz -C "$tmp/core" package/bin/napi-v6/linux/x64/libonnxruntime.so.1
  tar -xzf "$tmp"/com.github.asus4.onnxruntime.linux-x64-gpu-*.tgz -C "$tmp/providers" \
    package/Plugins/Linux/x64/libonnxruntime_providers_shared.so package/Plugins/Linux/x64/libonnxruntime_providers_cuda.so
  cuda="$tmp/providers/package/Plugins/Linux/x64/libonnxruntime_providers_cuda.so"
  # The provider must come from the core's release: ORT loads it through an
  # internal interface that changes between releases.
  if ! grep -qaF "$version" "$cuda"; then
    echo "setup-gpu: $providers_package does not carry ONNX Runtime $version's CUDA provider" >&2
    exit 1
  fi
  install -m 755 "$tmp/core/package/bin/napi-v6/linux/x64/libonnxruntime.so.1" "$dir/libonnxruntime.so"
  install -m 755 "$tmp/providers/package/Plugins/Linux/x64/libonnxruntime_providers_shared.so" "$dir/"
  # Last, so that an interrupted run is redone.
  install -m 755 "$cuda" "$dir/libonnxruntime_providers_cuda.so.tmp"
  mv "$dir/libonnxruntime_providers_cuda.so.tmp" "$dir/libonnxruntime_providers_cuda.so"
fi

missing=$(ldd "$dir/libonnxruntime_providers_cuda.so" 2>/dev/null | sed -n 's/^\s*\(\S*\) => not found/\1/p' | tr '\n' ' ')
if [ -n "$missing" ]; then
  echo "setup-gpu: the CUDA provider cannot find ${missing}on the library path: add the folders of CUDA 13's libraries (and cuDNN 9's) to LD_LIBRARY_PATH" >&2
fi

printf 'export DCD_ORT_LIB=%q\n' "$dir/libonnxruntime.so"

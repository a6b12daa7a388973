#!/usr/bin/env bash
# tokentrail's test command (the README's): installs and builds what the tests need on a fresh
# machine, then runs the format check, clippy with warnings denied, and every test.
#
#   Jaeger v2      built from its Go module (tools/jaeger), cached in tools/bin/jaeger
#   cargo-lambda   from PyPI into .venv-tools (the Lambda runtime emulator)
#
# Tests start what they need themselves, on free loopback ports, and stop it.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TOOLS="$ROOT/tools/bin"
mkdir -p "$TOOLS"
step() { printf '\n==> %s\n' "$*"; }

if [ ! -x "$TOOLS/jaeger" ]; then
  command -v go >/dev/null || { echo "Go is required to build Jaeger (tools/jaeger)"; exit 1; }
  step "building Jaeger v1.76.0 from its Go module (once; cached in tools/bin/jaeger)"
  (cd tools/jaeger && go build -o "$TOOLS/jaeger" github.com/jaegertracing/jaeger/cmd/jaeger)
fi

if [ ! -x .venv-tools/bin/cargo-lambda ]; then
  step "installing cargo-lambda from PyPI into .venv-tools"
  python3 -m venv .venv-tools
  .venv-tools/bin/pip install --quiet --disable-pip-version-check cargo-lambda
fi

export TOKENTRAIL_JAEGER_BIN="$TOOLS/jaeger"
export TOKENTRAIL_CARGO_LAMBDA="$ROOT/.venv-tools/bin/cargo-lambda"
export TOKENTRAIL_REQUIRE_TOOLS=1

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy (warnings denied)"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo test"
cargo test --workspace

step "all checks passed"

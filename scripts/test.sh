#!/usr/bin/env bash
# tokentrail's test command (the README's): installs and builds what the tests need on a fresh
# machine, then runs the format check, clippy with warnings denied, and every test.
#
#   Jaeger v2      built from its Go module (tools/jaeger), cached in tools/bin/jaeger
#   cargo-lambda   from PyPI into .venv-tools (the Lambda runtime emulator)
#   moto           from PyPI into .venv-aws (the AWS emulator: STS, Secrets Manager), started
#                  here on a free loopback port for the whole run and stopped at exit
#   cfn-lint       from PyPI into .venv-cfn (checks deploy/*.json; its bundled schemas include
#                  AWS::BedrockAgentCore::*)
#   Chromium       from Debian (apt-get install chromium): renders the HTML report
#   Prometheus     from Debian (apt-get install prometheus): Jaeger's Monitor tab (SPM) test
#   qemu-user, libc6-arm64-cross  from Debian: run the arm64 Lambda bootstraps deploy/ ships on
#                  an x86_64 machine, under cargo-lambda's emulator
#   the Lambda zips  scripts/lambda-build.sh (arm64, the `lambda` profile) into target/lambda
#   playwright-core from npm into tools/node (drives that Chromium; never downloads a browser)
#
# Other tests start what they need themselves, on free loopback ports, and stop it.
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

if [ ! -x .venv-aws/bin/moto_server ]; then
  step "installing moto[server] from PyPI into .venv-aws"
  python3 -m venv .venv-aws
  .venv-aws/bin/pip install --quiet --disable-pip-version-check 'moto[server]==5.2.5'
fi

if [ ! -x .venv-cfn/bin/cfn-lint ]; then
  step "installing cfn-lint from PyPI into .venv-cfn"
  python3 -m venv .venv-cfn
  .venv-cfn/bin/pip install --quiet --disable-pip-version-check 'cfn-lint==1.58.0'
fi

# moto 5.2.5 answers GetTraceSummaries with `"Users": {}` where X-Ray's model (and so the Rust
# SDK's strict parser) has a list: make the emulator answer in X-Ray's shape. Idempotent.
MOTO_XRAY=$(.venv-aws/bin/python -c 'import moto.xray.models as m; print(m.__file__)')
sed -i 's/"Users": {},  # Not implemented yet/"Users": [],  # Not implemented yet (tokentrail: a list, as X-Ray answers)/' "$MOTO_XRAY"
grep -q '"Users": \[\]' "$MOTO_XRAY" || { echo "could not fix moto's GetTraceSummaries shape in $MOTO_XRAY"; exit 1; }

DEBIAN_WANTED=""
command -v chromium >/dev/null || DEBIAN_WANTED="$DEBIAN_WANTED chromium"
[ -x /usr/bin/prometheus ] || DEBIAN_WANTED="$DEBIAN_WANTED prometheus"
if [ "$(uname -m)" != aarch64 ]; then
  command -v qemu-aarch64 >/dev/null || DEBIAN_WANTED="$DEBIAN_WANTED qemu-user"
  [ -e /usr/aarch64-linux-gnu/lib/ld-linux-aarch64.so.1 ] || DEBIAN_WANTED="$DEBIAN_WANTED libc6-arm64-cross"
fi
if [ -n "$DEBIAN_WANTED" ]; then
  step "installing from Debian:$DEBIAN_WANTED (the HTML report's browser; Prometheus for Jaeger's Monitor tab; qemu-user and the arm64 C library for the arm64 bootstraps)"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $DEBIAN_WANTED >/dev/null
  # The package may start its own Prometheus service: the tests start theirs on free ports.
  $SUDO service prometheus stop >/dev/null 2>&1 || true
fi

if [ ! -d tools/node/node_modules/playwright-core ]; then
  step "installing playwright-core from npm into tools/node (drives Debian's Chromium)"
  (cd tools/node && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --silent)
fi

step "starting moto on a free loopback port"
MOTO_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
MOTO_LOG="$ROOT/target/moto.log"
mkdir -p "$ROOT/target"
.venv-aws/bin/moto_server -H 127.0.0.1 -p "$MOTO_PORT" >"$MOTO_LOG" 2>&1 &
MOTO_PID=$!
trap 'kill "$MOTO_PID" 2>/dev/null || true' EXIT
moto_up() { python3 -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=2)" "http://127.0.0.1:$MOTO_PORT/moto-api/" >/dev/null 2>&1; }
for _ in $(seq 1 100); do
  if moto_up; then break; fi
  if ! kill -0 "$MOTO_PID" 2>/dev/null; then echo "moto exited; its log:"; cat "$MOTO_LOG"; exit 1; fi
  sleep 0.2
done
moto_up || { echo "moto did not start; its log:"; cat "$MOTO_LOG"; exit 1; }
export TOKENTRAIL_MOTO_ENDPOINT="http://127.0.0.1:$MOTO_PORT"

export TOKENTRAIL_JAEGER_BIN="$TOOLS/jaeger"
export TOKENTRAIL_CARGO_LAMBDA="$ROOT/.venv-tools/bin/cargo-lambda"
export TOKENTRAIL_CFN_LINT="$ROOT/.venv-cfn/bin/cfn-lint"
export TOKENTRAIL_LAMBDA_ZIPS="$ROOT/target/lambda"
if [ "$(uname -m)" != aarch64 ]; then
  TOKENTRAIL_QEMU_AARCH64=$(command -v qemu-aarch64)
  export TOKENTRAIL_QEMU_AARCH64
fi
TOKENTRAIL_CHROMIUM=$(command -v chromium)
export TOKENTRAIL_CHROMIUM
export TOKENTRAIL_NODE_MODULES="$ROOT/tools/node/node_modules"
export TOKENTRAIL_PROMETHEUS=/usr/bin/prometheus
export TOKENTRAIL_REQUIRE_TOOLS=1

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy (warnings denied)"
cargo clippy --workspace --all-targets -- -D warnings

step "the Lambda zips deploy/ ships (scripts/lambda-build.sh: arm64, cargo-lambda)"
bash scripts/lambda-build.sh

step "cargo test"
cargo test --workspace

# The Lambda bootstraps build the telemetry crate without its `grpc` and `xray-api` features
# (the workspace build above has them, for the CLI): lint that build, and run the telemetry
# tests that check those exporters are refused with the reason.
step "Lambda bootstraps' feature set: clippy, telemetry tests"
cargo clippy -p tokentrail-agent -p tokentrail-interceptor -p tokentrail-target -p tokentrail-broker -- -D warnings
cargo test -p tokentrail-telemetry --lib

step "all checks passed"

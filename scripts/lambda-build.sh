#!/usr/bin/env bash
# Build the four Lambda bootstraps as deployable zips, with cargo-lambda:
#
#   scripts/lambda-build.sh                    arm64 (what deploy/ deploys: provided.al2023, arm64)
#   scripts/lambda-build.sh --x86-64           x86_64, into target/lambda-x86_64 (target/lambda holds
#                                              only what deploy/ ships: arm64)
#   scripts/lambda-build.sh [--x86-64] --release   the `release` profile instead of `lambda`
#
# Each hop is `cargo lambda build --profile lambda --arm64 --output-format zip -p tokentrail-<hop>`,
# all four in one cargo run (they share one dependency build). The workspace's `lambda` profile is
# `release` with fat LTO, one codegen unit and opt-level "z": smaller bootstraps (the 8 MB goal),
# a slower build; --release builds with the plain `release` profile. The zips land in
# target/lambda/tokentrail-<hop>/bootstrap.zip, where deploy/*.json name them. Prints each
# bootstrap's architecture (read from its ELF header), its size unzipped and the zip's size.
#
# cargo-lambda: $TOKENTRAIL_CARGO_LAMBDA, else .venv-tools/bin/cargo-lambda (scripts/test.sh
# installs it), else `cargo lambda` on PATH. The arm64 build needs the Rust target
# aarch64-unknown-linux-gnu (added here with rustup when it is missing).
set -euo pipefail
cd "$(dirname "$0")/.."
ARCH=arm64
PROFILE=(--profile lambda)
for arg in "$@"; do
  case "$arg" in
    --arm64) ARCH=arm64 ;;
    --x86-64) ARCH=x86-64 ;;
    --release) PROFILE=(--release) ;;
    *) echo "usage: scripts/lambda-build.sh [--arm64|--x86-64] [--release]" >&2; exit 2 ;;
  esac
done
HOPS="agent interceptor broker target"
OUT=target/lambda
[ "$ARCH" = arm64 ] || OUT=target/lambda-x86_64

CL=${TOKENTRAIL_CARGO_LAMBDA:-}
if [ -z "$CL" ]; then
  if [ -x .venv-tools/bin/cargo-lambda ]; then CL=.venv-tools/bin/cargo-lambda
  elif command -v cargo-lambda >/dev/null; then CL=$(command -v cargo-lambda)
  else echo "cargo-lambda is not installed: pip install cargo-lambda (scripts/test.sh puts it in .venv-tools)" >&2; exit 1
  fi
fi
# cargo-lambda cross-links with Zig: the `ziglang` package installed next to it (pip) is found
# through the python3 first on PATH.
PATH="$(cd "$(dirname "$CL")" && pwd):$PATH"
export PATH
if [ "$ARCH" = arm64 ] && ! rustup target list --installed 2>/dev/null | grep -qx aarch64-unknown-linux-gnu; then
  echo "==> adding the Rust target aarch64-unknown-linux-gnu"
  rustup target add aarch64-unknown-linux-gnu
fi

PKGS=()
for hop in $HOPS; do PKGS+=(-p "tokentrail-$hop"); done
echo "==> cargo lambda build ${PROFILE[*]} --$ARCH --output-format zip --lambda-dir $OUT ${PKGS[*]}"
start=$(date +%s)
"$CL" lambda build "${PROFILE[@]}" "--$ARCH" --output-format zip --lambda-dir "$OUT" "${PKGS[@]}"
echo "==> built in $(( $(date +%s) - start )) s"

python3 - "$ARCH" "$OUT" $HOPS <<'PY'
import struct, sys, zipfile
arch, out, hops = sys.argv[1], sys.argv[2], sys.argv[3:]
want = {"arm64": (183, "arm64"), "x86-64": (62, "x86_64")}[arch]
names = {183: "arm64", 62: "x86_64"}
bad = False
print(f"{'function':<24} {'arch':<7} {'bootstrap':>12} {'zip':>12}  path")
for hop in hops:
    path = f"{out}/tokentrail-{hop}/bootstrap.zip"
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("bootstrap")
        head = z.open("bootstrap").read(20)
    if head[:4] != b"\x7fELF":
        print(f"{path}: bootstrap is not an ELF executable"); bad = True; continue
    machine = struct.unpack("<H", head[18:20])[0]
    got = names.get(machine, f"machine {machine}")
    if machine != want[0]:
        print(f"{path}: bootstrap is {got}, not {want[1]}"); bad = True
    zsize = __import__("os").path.getsize(path)
    print(f"tokentrail-{hop:<13} {got:<7} {info.file_size/1e6:>9.2f} MB {zsize/1e6:>9.2f} MB  {path}")
sys.exit(1 if bad else 0)
PY

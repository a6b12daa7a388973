#!/usr/bin/env python3
"""Start-to-ready of a Lambda bootstrap under the cargo-lambda emulator.

    scripts/lambda-start.py [--starts 10] [--cargo-lambda .venv-tools/bin/cargo-lambda] \
        target/lambda/tokentrail-interceptor

Starts `cargo lambda watch --only-lambda-apis` once, then, for each start: spawns the bootstrap
attached to it (as Lambda starts a new execution environment), sends one REQUEST-interceptor
event without a user token (the interceptor answers with its fail-closed denial, so no IdP is
needed) and times spawn -> response. Then a few warm invocations of the last process. Prints
min / median / max in milliseconds. Only the standard library; nothing is left running.
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request

EVENT = {
    "interceptorInputVersion": "1.0",
    "mcp": {
        "rawGatewayRequest": {"body": "{}"},
        "gatewayRequest": {
            "headers": {"content-type": "application/json"},
            "body": {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "tools/call",
                "params": {"name": "resources___getResource", "arguments": {"id": "r1"}},
            },
        },
    },
}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, seconds=30.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"the emulator never opened port {port}")


def invoke(port, timeout=10.0):
    url = f"http://127.0.0.1:{port}/2015-03-31/functions/_/invocations"
    req = urllib.request.Request(url, data=json.dumps(EVENT).encode(), method="POST")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        body = resp.read()
    answer = json.loads(body)
    if "interceptorOutputVersion" not in answer:
        sys.exit(f"unexpected answer from the bootstrap: {body[:300]!r}")
    return answer


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bootstrap", help="the bootstrap binary (e.g. target/lambda/tokentrail-interceptor)")
    ap.add_argument("--starts", type=int, default=10)
    ap.add_argument("--warm", type=int, default=20, help="warm invocations after the last start")
    ap.add_argument("--cargo-lambda", default=".venv-tools/bin/cargo-lambda")
    args = ap.parse_args()
    if args.starts < 1:
        sys.exit("--starts must be at least 1")
    for path in (args.bootstrap, args.cargo_lambda):
        if not os.access(path, os.X_OK):
            sys.exit(f"{path}: not an executable file")

    port = free_port()
    emulator = subprocess.Popen(
        [args.cargo_lambda, "lambda", "watch", "--only-lambda-apis", "-A", "127.0.0.1", "-P", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    env = dict(
        os.environ,
        AWS_LAMBDA_RUNTIME_API=f"http://127.0.0.1:{port}/.rt",
        AWS_LAMBDA_FUNCTION_NAME="_",
        AWS_LAMBDA_FUNCTION_VERSION="1",
        AWS_LAMBDA_FUNCTION_MEMORY_SIZE="128",
        TOKENTRAIL_ISSUER="http://127.0.0.1:9/unused",
        TOKENTRAIL_LOG="off",
    )
    cold, warm = [], []
    try:
        wait_port(port)
        for i in range(args.starts):
            t0 = time.perf_counter()
            fn = subprocess.Popen([args.bootstrap], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                invoke(port)
                cold.append((time.perf_counter() - t0) * 1000)
                if i == args.starts - 1:
                    for _ in range(args.warm):
                        t1 = time.perf_counter()
                        invoke(port)
                        warm.append((time.perf_counter() - t1) * 1000)
            except (urllib.error.URLError, TimeoutError) as e:
                sys.exit(f"start {i + 1}: no answer from the bootstrap: {e}")
            finally:
                fn.terminate()
                fn.wait(timeout=10)
    finally:
        emulator.terminate()
        emulator.wait(timeout=10)

    def summary(xs):
        return f"median {statistics.median(xs):.2f} ms (min {min(xs):.2f}, max {max(xs):.2f}, n={len(xs)})"

    size = os.path.getsize(args.bootstrap)
    print(f"{args.bootstrap}: {size:,} bytes")
    print(f"start-to-ready (spawn -> first response): {summary(cold)}")
    if warm:
        print(f"warm invocation through the emulator: {summary(warm)}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Start-to-ready of a Lambda bootstrap under the cargo-lambda emulator.

    scripts/lambda-start.py [--starts 10] [--cargo-lambda .venv-tools/bin/cargo-lambda] \
        target/lambda/tokentrail-interceptor

Starts `cargo lambda watch --only-lambda-apis` once, then, for each start: spawns the bootstrap
attached to it (as Lambda starts a new execution environment), sends one REQUEST-interceptor
event without a user token (the interceptor answers with its fail-closed denial, so no IdP is
needed) and times spawn -> response. Then a few warm invocations of the last process. Prints
min / median / max in milliseconds. Only the standard library; nothing is left running.

With --flush, also the per-invocation flush: each invocation exports its spans before it returns
(a frozen function loses the rest), so the same warm invocations are timed twice, once exporting
OTLP/HTTP to a receiver on loopback (started here; it answers 200 and keeps nothing) and once with
OTEL_TRACES_EXPORTER=none; the difference of the medians is what the flush adds.

An arm64 bootstrap on an x86_64 machine runs under qemu-user with --qemu (qemu-aarch64 and the
arm64 C library, e.g. Debian's qemu-user and libc6-arm64-cross): it then proves the bootstrap
starts and answers, but its times are the emulator's, not Lambda's.
"""

import argparse
import http.server
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
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


class Receiver(http.server.BaseHTTPRequestHandler):
    """An OTLP/HTTP receiver that keeps nothing: reads the body, answers 200."""

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def starts_and_warm(cmd, env, port, starts, warm_n):
    cold, warm = [], []
    for i in range(starts):
        t0 = time.perf_counter()
        fn = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            invoke(port, timeout=60.0)
            cold.append((time.perf_counter() - t0) * 1000)
            if i == starts - 1:
                for _ in range(warm_n):
                    t1 = time.perf_counter()
                    invoke(port)
                    warm.append((time.perf_counter() - t1) * 1000)
        except (urllib.error.URLError, TimeoutError) as e:
            sys.exit(f"start {i + 1}: no answer from the bootstrap: {e}")
        finally:
            fn.terminate()
            fn.wait(timeout=10)
    return cold, warm


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bootstrap", help="the bootstrap binary (e.g. target/lambda/tokentrail-interceptor)")
    ap.add_argument("--starts", type=int, default=10)
    ap.add_argument("--warm", type=int, default=20, help="warm invocations after the last start")
    ap.add_argument("--cargo-lambda", default=".venv-tools/bin/cargo-lambda")
    ap.add_argument("--flush", action="store_true", help="also time the per-invocation flush to a loopback receiver")
    ap.add_argument("--qemu", help="run the bootstrap under this qemu-user binary (e.g. qemu-aarch64)")
    ap.add_argument("--qemu-ld-prefix", default="/usr/aarch64-linux-gnu")
    args = ap.parse_args()
    if args.starts < 1:
        sys.exit("--starts must be at least 1")
    for path in (args.bootstrap, args.cargo_lambda):
        if not os.access(path, os.X_OK):
            sys.exit(f"{path}: not an executable file")
    cmd = [args.bootstrap]
    if args.qemu:
        cmd = [args.qemu, args.bootstrap]

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
    if args.qemu:
        env["QEMU_LD_PREFIX"] = args.qemu_ld_prefix
    receiver = None
    try:
        wait_port(port)
        cold, warm = starts_and_warm(cmd, env, port, args.starts, args.warm)
        if args.flush:
            receiver = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
            threading.Thread(target=receiver.serve_forever, daemon=True).start()
            exporting = dict(env, TOKENTRAIL_COLLECTOR_ENDPOINT=f"http://127.0.0.1:{receiver.server_address[1]}")
            quiet = dict(env, OTEL_TRACES_EXPORTER="none", OTEL_METRICS_EXPORTER="none")
            _, warm_export = starts_and_warm(cmd, exporting, port, 1, args.warm)
            _, warm_none = starts_and_warm(cmd, quiet, port, 1, args.warm)
    finally:
        if receiver:
            receiver.shutdown()
        emulator.terminate()
        emulator.wait(timeout=10)

    def summary(xs):
        return f"median {statistics.median(xs):.2f} ms (min {min(xs):.2f}, max {max(xs):.2f}, n={len(xs)})"

    size = os.path.getsize(args.bootstrap)
    where = " (under qemu-user: the emulator's times)" if args.qemu else ""
    print(f"{args.bootstrap}: {size:,} bytes{where}")
    print(f"start-to-ready (spawn -> first response): {summary(cold)}")
    if warm:
        print(f"warm invocation through the emulator: {summary(warm)}")
    if args.flush:
        print(f"warm invocation, spans exported to a loopback receiver: {summary(warm_export)}")
        print(f"warm invocation, export off (OTEL_TRACES_EXPORTER=none): {summary(warm_none)}")
        print(f"per-invocation flush (difference of the medians): "
              f"{statistics.median(warm_export) - statistics.median(warm_none):.2f} ms")


if __name__ == "__main__":
    main()

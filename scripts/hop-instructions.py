#!/usr/bin/env python3
"""Instructions a hop executes per request: untraced, traced by tokentrail, traced the plain way.

    scripts/hop-instructions.py [--bin target/profiling/tokentrail] [--requests 100,1100] \
        [--out tokentrail-out/instructions] [--pipelines tokentrail,plain]

`tokentrail bench` measures the whole chain's throughput and CPU, but on a shared two-core machine
two identical runs differ by several per cent, so a change worth 2 % cannot be seen in it. This
script counts instructions instead, which do not move with the machine's load: it starts a local
stack (`tokentrail up`) for the IdP and the embedded collector, then runs one extra target hop
under `valgrind --tool=callgrind`, once untraced (`OTEL_TRACES_SAMPLER=always_off`) and once
per span pipeline (`TOKENTRAIL_SPAN_PIPELINE`): `tokentrail`, the hop span with its provenance,
every string scrubbed, tokentrail's encoder; `plain`, the same span made the plain way with
`tracing` + `tracing-opentelemetry` and exported by `opentelemetry-otlp`'s batch exporter, no
provenance and no scrub; each for two request counts, and sends it that many `GET /orders/A-1001` as alice (a user
JWT and a sampled `traceparent`, as the gateway sends them). The difference between the two
counts, divided by the difference in requests, is the cost of one request without the process's
start and stop. Both pipelines export to the same receiver (the stack's collector), which counts
the spans of each run's traces: the runs must export the same number, or the script fails. It
prints instructions per request for each run, and what each pipeline adds per span (recording,
scrubbing, encoding, export) and its ratio to the plain one, split into the request threads (the main thread
and the Tokio runtime's workers, which serve the request and record its span) and every other
thread (the span and metric exporters and their HTTP client). The callgrind files, one per
thread, stay in --out for `callgrind_annotate` (build with `cargo build --profile profiling` to
have symbols).

Needs valgrind (Debian: `apt-get install valgrind`). Only the standard library; nothing is left
running.
"""

import argparse
import glob
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request


def wait_for_line(path, prefix, proc, limit_s):
    """The first line of `path` starting with `prefix`, while `proc` runs, within `limit_s`."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{proc.args[0]} exited with {proc.returncode}; see {path}")
        try:
            with open(path) as f:
                for line in f:
                    if line.startswith(prefix):
                        return line
        except FileNotFoundError:
            pass
        time.sleep(0.1)
    sys.exit(f"no line starting with {prefix!r} in {path} within {limit_s} s")


def login(idp):
    body = urllib.parse.urlencode(
        {
            "grant_type": "password",
            "client_id": "tokentrail-app",
            "username": "alice",
            "password": "alice-password",
        }
    ).encode()
    with urllib.request.urlopen(idp + "/token", body, timeout=10) as r:
        return json.load(r)["access_token"]


def drive(url, token, n):
    """n requests on one connection: (the number answered 200, the trace ids sent)."""
    u = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    ok = 0
    traces = set()
    for _ in range(n):
        trace, span = os.urandom(16).hex(), os.urandom(8).hex()
        traces.add(trace)
        conn.request(
            "GET",
            "/orders/A-1001",
            headers={
                "authorization": "Bearer " + token,
                "traceparent": f"00-{trace}-{span}-01",
            },
        )
        r = conn.getresponse()
        r.read()
        ok += r.status == 200
    conn.close()
    return ok, traces


def spans_stored(traces_file, traces):
    """Spans the collector stored (OTLP/JSON lines) whose trace id is one of `traces`."""
    count = 0
    try:
        with open(traces_file) as f:
            for line in f:
                for rs in json.loads(line).get("resourceSpans", []):
                    for ss in rs.get("scopeSpans", []):
                        count += sum(s.get("traceId") in traces for s in ss.get("spans", []))
    except FileNotFoundError:
        pass
    return count


def wait_for_spans(traces_file, traces, limit_s=10):
    """Spans stored for `traces`, once the count stops growing (the collector writes as the
    exports arrive; the hop exported what was left when it stopped)."""
    deadline = time.monotonic() + limit_s
    last = -1
    while True:
        count = spans_stored(traces_file, traces)
        if count == last or time.monotonic() > deadline:
            return count
        last = count
        time.sleep(0.5)


def instructions(path):
    with open(path) as f:
        for line in f:
            m = re.match(r"(summary|totals):\s*(\d+)", line)
            if m:
                return int(m.group(2))
    sys.exit(f"no instruction total in {path}")


def per_thread(out):
    """Instructions of a callgrind run with one file per thread: (request threads, the others).

    The request threads are the main thread (file -01) and the Tokio runtime's workers, found by
    the worker loop in their profile."""
    files = sorted(glob.glob(f"{glob.escape(out)}-[0-9]*"))
    if not files:
        sys.exit(f"no callgrind file {out}-NN was written")
    serving = others = 0
    for path in files:
        total = instructions(path)
        with open(path, errors="replace") as f:
            worker = any("multi_thread::worker::run" in line for line in f)
        if worker or path.endswith("-01"):
            serving += total
        else:
            others += total
    return serving, others


def run_target(args, env, mode, n, token, traces_file):
    """One target process serving n requests under callgrind: (instructions of its request
    threads, of the others, spans the collector stored for the requests' traces)."""
    out = os.path.join(args.out, f"callgrind.{mode}.{n}")
    log = os.path.join(args.out, f"target.{mode}.{n}.out")
    for stale in glob.glob(glob.escape(out)) + glob.glob(f"{glob.escape(out)}-*"):
        os.remove(stale)  # an earlier run's files, possibly for more threads
    hop_env = dict(env)
    if mode == "off":
        hop_env["OTEL_TRACES_SAMPLER"] = "always_off"
    else:
        hop_env["TOKENTRAIL_SPAN_PIPELINE"] = mode
    with open(log, "w") as stdout:
        proc = subprocess.Popen(
            [
                "valgrind",
                "--tool=callgrind",
                "--separate-threads=yes",
                f"--callgrind-out-file={out}",
                args.bin,
                "serve",
                "target",
            ],
            env=hop_env,
            stdout=stdout,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )
    try:
        url = wait_for_line(log, "READY ", proc, 120).split()[2]
        ok, traces = drive(url, token, n)
        if ok != n:
            sys.exit(f"the target answered 200 to {ok} of {n} requests")
        time.sleep(1)  # one more export interval
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    return (*per_thread(out), wait_for_spans(traces_file, traces))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bin", default="target/profiling/tokentrail")
    p.add_argument("--requests", default="100,1100", help="two request counts, e.g. 100,1100")
    p.add_argument("--out", default="tokentrail-out/instructions")
    p.add_argument(
        "--pipelines",
        default="tokentrail,plain",
        help="span pipelines to measure against the untraced run: tokentrail, plain or both",
    )
    args = p.parse_args()
    pipelines = [m.strip() for m in args.pipelines.split(",") if m.strip()]
    if not pipelines or any(m not in ("tokentrail", "plain") for m in pipelines):
        sys.exit(f"--pipelines takes tokentrail, plain or both, not {args.pipelines!r}")
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (Debian: apt-get install valgrind)")
    if not os.access(args.bin, os.X_OK):
        sys.exit(f"{args.bin} is not built: cargo build --profile profiling -p tokentrail")
    try:
        small, large = (int(x) for x in args.requests.split(","))
    except ValueError:
        sys.exit(f"--requests takes two counts, e.g. 100,1100, not {args.requests!r}")
    if not 0 < small < large:
        sys.exit("--requests: the second count must be larger than the first, both above 0")
    os.makedirs(args.out, exist_ok=True)
    stack_out = os.path.join(args.out, "stack")
    up_log = os.path.join(args.out, "up.log")
    with open(up_log, "w") as stdout:
        up = subprocess.Popen(
            [args.bin, "up", "--out", stack_out], stdout=stdout, stderr=subprocess.STDOUT
        )
    try:
        idp = wait_for_line(up_log, "  idp ", up, 120).split()[1]
        collector = wait_for_line(up_log, "  collector ", up, 10).split()[1]
        collector = collector.removesuffix("/v1/traces")
        with open(os.path.join(stack_out, "stack-passthrough.key")) as f:
            key = f.read().strip()
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("OTEL_", "TOKENTRAIL_"))
        }
        env.update(
            {
                "TOKENTRAIL_ISSUER": idp,
                "TOKENTRAIL_COLLECTOR_ENDPOINT": collector,
                "TOKENTRAIL_FINGERPRINT_KEY": key,
                "TOKENTRAIL_PATTERN": "passthrough",
                "TOKENTRAIL_LOG": "off",
                "OTEL_BSP_SCHEDULE_DELAY": "200",
            }
        )
        token = login(idp)
        traces_file = os.path.join(stack_out, "traces.jsonl")
        per_request, spans = {}, {}
        for mode in ("off", *pipelines):
            counts = {}
            for n in (small, large):
                counts[n] = run_target(args, env, mode, n, token, traces_file)
                serving, others, stored = counts[n]
                print(
                    f"{mode:10} {n:6} requests: {serving + others:,} instructions, "
                    f"{stored} spans stored",
                    flush=True,
                )
            per_request[mode] = [
                (counts[large][i] - counts[small][i]) / (large - small) for i in (0, 1)
            ]
            spans[mode] = (counts[small][2], counts[large][2])
        if spans["off"] != (0, 0):
            sys.exit(f"the untraced runs exported spans: {spans['off']}")
        for mode in pipelines:
            if spans[mode] != spans[pipelines[0]] or 0 in spans[mode]:
                sys.exit(
                    "the pipelines did not export the same spans: "
                    + ", ".join(f"{m} {spans[m][0]} and {spans[m][1]}" for m in pipelines)
                )
        per_span = (spans[pipelines[0]][1] - spans[pipelines[0]][0]) / (large - small)
        off = per_request["off"]
        print(
            f"\nper request ({large - small} requests; spans per request at the receiver: "
            f"{per_span:g}; the same for every pipeline)"
        )
        print(f"{'':12}{'request threads':>18}{'export threads':>18}{'all':>12}")
        print(f"{'untraced':12}{off[0]:>18,.0f}{off[1]:>18,.0f}{sum(off):>12,.0f}")
        adds = {}
        for mode in pipelines:
            on = per_request[mode]
            adds[mode] = [(on[i] - off[i]) / per_span for i in (0, 1)]
            print(f"{mode:12}{on[0]:>18,.0f}{on[1]:>18,.0f}{sum(on):>12,.0f}")
        print("\nwhat tracing adds per span")
        print(f"{'':12}{'request threads':>18}{'export threads':>18}{'all':>12}{'of untraced':>13}")
        for mode in pipelines:
            a = adds[mode]
            print(
                f"{mode:12}{a[0]:>18,.0f}{a[1]:>18,.0f}{sum(a):>12,.0f}"
                f"{sum(a) * per_span / sum(off):>+13.1%}"
            )
        if "plain" in adds and "tokentrail" in adds:
            ratio = sum(adds["tokentrail"]) / sum(adds["plain"])
            print(f"tokentrail / plain: {ratio:.2f}")
        print(f"callgrind files: {args.out}/callgrind.*")
    finally:
        up.send_signal(signal.SIGINT)
        try:
            up.wait(timeout=30)
        except subprocess.TimeoutExpired:
            up.kill()


if __name__ == "__main__":
    main()

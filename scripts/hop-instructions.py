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

`--chain` measures the whole passthrough chain instead: a local stack (`tokentrail up`) per run
with every hop under callgrind (`TOKENTRAIL_HOP_WRAPPER`), driven by `tokentrail load` at one
fixed rate for two durations; per request it counts what the chain's hops (runtime, agent, gateway,
interceptor, target; not the IdP) execute, and its spans at the stack's collector. The load is
open loop at `--rate` (40 requests per second by default, what the hops sustain under callgrind
here): each export then carries the same number of spans run after run. Each run starts with
`--warmup` seconds of load, after which every hop's counters are zeroed (`callgrind_control
--zero`), so cold caches are not counted. Its untraced
run is the denominator of tracing's share.

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


def stored(traces_file):
    """(service.name, span) of every span the collector stored (OTLP/JSON lines)."""
    try:
        with open(traces_file) as f:
            for line in f:
                for rs in json.loads(line).get("resourceSpans", []):
                    service = resource_service(rs)
                    for ss in rs.get("scopeSpans", []):
                        for span in ss.get("spans", []):
                            yield service, span
    except FileNotFoundError:
        return


def resource_service(rs):
    for kv in rs.get("resource", {}).get("attributes", []):
        if kv.get("key") == "service.name":
            return kv.get("value", {}).get("stringValue")
    return None


def spans_stored(traces_file, traces):
    """Spans the collector stored whose trace id is one of `traces`."""
    return sum(span.get("traceId") in traces for _, span in stored(traces_file))


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
    return thread_split(files)


def thread_split(files):
    """Instructions of callgrind files of one thread each: (request threads, the others)."""
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


def mode_env(env, mode):
    """`env` for a run of `mode`: `off` (untraced: the sampler drops every span) or a span
    pipeline (`tokentrail`, `plain`)."""
    run_env = dict(env)
    if mode == "off":
        run_env["OTEL_TRACES_SAMPLER"] = "always_off"
    else:
        run_env["TOKENTRAIL_SPAN_PIPELINE"] = mode
    return run_env


def stop_stack(up, limit_s):
    """Stop `tokentrail up` as Ctrl-C does (its hops flush and exit), killing it after `limit_s`."""
    up.send_signal(signal.SIGINT)
    try:
        up.wait(timeout=limit_s)
    except subprocess.TimeoutExpired:
        up.kill()


CHAIN_HOPS = ("runtime", "agent", "gateway", "interceptor", "target", "broker")


def hop_spans_stored(traces_file):
    """Spans the collector stored from the chain's hops (by `service.name`)."""
    return sum(service in CHAIN_HOPS for service, _ in stored(traces_file))


def per_hop_thread(out):
    """Instructions of the chain's hops (files callgrind.<hop>.<pid>-NN): (request threads,
    the others), summed over the hops."""
    files = [
        path
        for path in sorted(glob.glob(os.path.join(glob.escape(out), "callgrind.*.*-[0-9]*")))
        if os.path.basename(path).split(".")[1] in CHAIN_HOPS
    ]
    missing = set(CHAIN_HOPS) - {"broker"} - {os.path.basename(p).split(".")[1] for p in files}
    if missing:
        sys.exit(f"no callgrind file of {', '.join(sorted(missing))} in {out}")
    return thread_split(files)


def run_chain(args, env, mode, seconds):
    """A stack with every hop under callgrind, loaded at `args.rate` for `seconds`: (instructions
    of the hops' request threads, of their other threads, requests answered, hop spans stored)."""
    out = os.path.join(args.out, f"chain.{mode}.{seconds}")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    run_env = mode_env(env, mode)
    run_env["TOKENTRAIL_HOP_WRAPPER"] = (
        "valgrind --tool=callgrind --separate-threads=yes "
        f"--callgrind-out-file={out}/callgrind.{{hop}}.%p"
    )
    up_log = os.path.join(out, "up.log")
    with open(up_log, "w") as stdout:
        up = subprocess.Popen(
            [args.bin, "up", "--out", out], env=run_env, stdout=stdout, stderr=subprocess.STDOUT
        )
    def load(seconds):
        run = subprocess.run(
            [
                args.bin, "load", "--out", out, "--pattern", "passthrough",
                "--rate", str(args.rate), "--duration", f"{seconds}s", "--warmup", "0s",
            ],
            env=run_env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        if run.returncode != 0:
            sys.exit(f"tokentrail load failed: {run.stderr.strip()}")
        with open(os.path.join(out, "load.json")) as f:
            done = json.load(f)["patterns"]["passthrough"]
        if done["outcomes"]["ok"] != done["sent"]:
            sys.exit(f"not every request was answered ok: {done['outcomes']} of {done['sent']}")
        return done

    try:
        wait_for_line(up_log, "  collector ", up, 900)
        # Warm-up, then every hop's counters to zero: what the first requests cost (JWKS
        # fetches, the first verification of each token, which several requests arriving
        # together may each do) differs from run to run and is not a request's cost.
        load(args.warmup)
        zero = subprocess.run(
            ["callgrind_control", "--zero", "tokentrail"], capture_output=True, text=True
        )
        if zero.returncode != 0:
            sys.exit(f"callgrind_control --zero failed: {zero.stderr.strip() or zero.stdout.strip()}")
        spans_before = hop_spans_stored(os.path.join(out, "traces.jsonl"))
        done = load(seconds)
        time.sleep(1)  # one more export interval
    finally:
        stop_stack(up, 900)
    if up.returncode not in (0, -signal.SIGINT):
        sys.exit(f"tokentrail up exited with {up.returncode}; see {up_log}")
    serving, others = per_hop_thread(out)
    stored = hop_spans_stored(os.path.join(out, "traces.jsonl")) - spans_before
    return serving, others, done["sent"], stored


def chain(args, pipelines):
    """--chain: the whole chain's hops, per request."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "TOKENTRAIL_"))}
    env["OTEL_BSP_SCHEDULE_DELAY"] = "200"
    short, long = args.seconds
    per_request, spans = {}, {}
    for mode in ("off", *pipelines):
        runs = {}
        for sec in (short, long):
            runs[sec] = run_chain(args, env, mode, sec)
            serving, others, sent, stored = runs[sec]
            print(
                f"{mode:10} {sec:4}s: {sent:5} requests, {serving + others:,} instructions in the "
                f"hops, {stored} hop spans stored",
                flush=True,
            )
        n = runs[long][2] - runs[short][2]
        if n <= 0:
            sys.exit(f"{mode}: the longer run did not send more requests ({runs})")
        per_request[mode] = [(runs[long][i] - runs[short][i]) / n for i in (0, 1)]
        spans[mode] = (runs[long][3] - runs[short][3]) / n
    report(per_request, spans, pipelines, f"{n} more requests in the longer runs; hop spans")
    print(f"callgrind files: {args.out}/chain.*/callgrind.*")


def report(per_request, spans, pipelines, what):
    """Print instructions per request of each run and what each pipeline adds per span; fail
    unless every pipeline exported as many spans per request (and the untraced run none)."""
    if spans["off"] != 0:
        sys.exit(f"the untraced runs exported spans: {spans['off']:g} per request")
    first = spans[pipelines[0]]
    if first <= 0 or any(abs(spans[m] - first) > 0.005 * first for m in pipelines):
        sys.exit(
            "the pipelines did not export the same spans per request: "
            + ", ".join(f"{m} {spans[m]:.3f}" for m in pipelines)
        )
    off = per_request["off"]
    print(f"\nper request ({what} per request at the receiver: {first:.2f}, the same for every pipeline)")
    print(f"{'':12}{'request threads':>18}{'export threads':>18}{'all':>12}")
    print(f"{'untraced':12}{off[0]:>18,.0f}{off[1]:>18,.0f}{sum(off):>12,.0f}")
    for mode in pipelines:
        on = per_request[mode]
        print(f"{mode:12}{on[0]:>18,.0f}{on[1]:>18,.0f}{sum(on):>12,.0f}")
    print("\nwhat tracing adds")
    print(
        f"{'':12}{'per span: request threads':>28}{'export threads':>16}{'all':>9}"
        f"{'per request':>13}{'of untraced':>13}"
    )
    adds = {}
    for mode in pipelines:
        on = per_request[mode]
        adds[mode] = [(on[i] - off[i]) / spans[mode] for i in (0, 1)]
        a = adds[mode]
        total = sum(on) - sum(off)
        print(
            f"{mode:12}{a[0]:>28,.0f}{a[1]:>16,.0f}{sum(a):>9,.0f}{total:>13,.0f}"
            f"{total / sum(off):>+13.1%}"
        )
    if "plain" in adds and "tokentrail" in adds:
        ratio = (sum(per_request["tokentrail"]) - sum(off)) / (sum(per_request["plain"]) - sum(off))
        print(f"tokentrail / plain: {ratio:.2f}")


def run_target(args, env, mode, n, token, traces_file):
    """One target process serving n requests under callgrind: (instructions of its request
    threads, of the others, spans the collector stored for the requests' traces)."""
    out = os.path.join(args.out, f"callgrind.{mode}.{n}")
    log = os.path.join(args.out, f"target.{mode}.{n}.out")
    for stale in glob.glob(glob.escape(out)) + glob.glob(f"{glob.escape(out)}-*"):
        os.remove(stale)  # an earlier run's files, possibly for more threads
    hop_env = mode_env(env, mode)
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
    p.add_argument(
        "--chain",
        action="store_true",
        help="the whole passthrough chain's hops under callgrind, driven by tokentrail load",
    )
    p.add_argument(
        "--rate",
        type=int,
        default=40,
        help="with --chain: requests per second (open loop; a fixed rate fixes how many spans "
        "each export carries, which the per-span cost depends on)",
    )
    p.add_argument(
        "--warmup",
        type=int,
        default=5,
        help="with --chain: seconds of load before the counters are zeroed",
    )
    p.add_argument(
        "--seconds",
        default="20,80",
        help="with --chain: the two load durations in seconds, e.g. 20,80",
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
    if args.chain:
        try:
            args.seconds = tuple(int(x) for x in args.seconds.split(","))
            assert len(args.seconds) == 2 and 0 < args.seconds[0] < args.seconds[1]
        except (ValueError, AssertionError):
            sys.exit(f"--seconds takes two durations, the second longer, e.g. 20,80, not {args.seconds!r}")
        chain(args, pipelines)
        return
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
            spans[mode] = (counts[large][2] - counts[small][2]) / (large - small)
        report(per_request, spans, pipelines, f"{large - small} requests; spans")
        print(f"callgrind files: {args.out}/callgrind.*")
    finally:
        stop_stack(up, 30)


if __name__ == "__main__":
    main()

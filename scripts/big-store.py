#!/usr/bin/env python3
"""Build a large span store for benchmarking `tokentrail audit`.

Copies the lines of a demo store (`tokentrail demo --out DIR` writes DIR/traces.jsonl) until the
new store holds at least the asked number of spans, giving every copy of a trace a fresh trace id
(same epoch-seconds prefix, so the ids stay X-Ray-compatible). Span ids repeat across copies,
which the audit does not mind: it groups by trace.

    cargo run --release -- demo --out /tmp/demo
    python3 scripts/big-store.py --from /tmp/demo --spans 1000000 --out /tmp/big
    /usr/bin/time -v target/release/tokentrail audit --store /tmp/big --format csv > /dev/null
"""

import argparse
import os
import re
import secrets
import sys

TRACE_ID = re.compile(r'"traceId":"([0-9a-f]{32})"')


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--from", dest="src", required=True, help="a demo output directory or its traces.jsonl")
    ap.add_argument("--spans", type=int, default=1_000_000, help="at least this many spans (default 1000000)")
    ap.add_argument("--out", required=True, help="directory to write traces.jsonl into")
    args = ap.parse_args()

    src = os.path.join(args.src, "traces.jsonl") if os.path.isdir(args.src) else args.src
    try:
        with open(src, encoding="utf-8") as f:
            lines = [line.rstrip("\n") for line in f if line.strip()]
    except OSError as e:
        print(f"big-store: cannot read {src}: {e}", file=sys.stderr)
        return 1
    per_copy = sum(line.count('"spanId"') for line in lines)
    if per_copy == 0:
        print(f"big-store: {src} holds no spans (run `tokentrail demo` first)", file=sys.stderr)
        return 1
    copies = -(-args.spans // per_copy)
    os.makedirs(args.out, exist_ok=True)
    dst = os.path.join(args.out, "traces.jsonl")
    written = 0
    with open(dst, "w", encoding="utf-8") as out:
        for copy in range(copies):
            fresh = {}

            def renew(m: re.Match) -> str:
                old = m.group(1)
                if old not in fresh:
                    fresh[old] = old[:8] + secrets.token_hex(12)
                return f'"traceId":"{fresh[old]}"'

            for line in lines:
                out.write(TRACE_ID.sub(renew, line))
                out.write("\n")
            written += per_copy
            if sys.stderr.isatty():
                print(f"\rbig-store: {written:,} spans", end="", file=sys.stderr)
    if sys.stderr.isatty():
        print(file=sys.stderr)
    print(f"big-store: {written:,} spans ({copies} copies of {per_copy}) in {dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

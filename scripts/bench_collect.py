#!/usr/bin/env python
"""Collect throughput and memory against a fake DeepSeek on 127.0.0.1 answering in L seconds.

    python scripts/bench_collect.py                     # asyncio client: 2000 and 8000 prompts
    python scripts/bench_collect.py --compare           # + httpx2 and httpx 0.28 at 1000 prompts

For each run: achieved requests/s of the collect loop, the ideal C/L, their ratio, and the peak RSS
of the collect process. Every run is its own process (peak RSS only grows), and the fake server is
another (so it does not share a GIL with the client). The expander is off. Figures are measured in
this one run; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def worker(args) -> None:
    """One `chainforge collect` in this process; prints {elapsed, rss_mb} as JSON."""
    sys.path.insert(0, str(ROOT))
    from chainforge.collect import engine, resolve
    from chainforge.collect.http import make_client

    resolve.make_client = lambda url, headers: make_client(url, headers, kind=args.client)
    elapsed: list[float] = []
    run = engine.Collector.run

    async def timed(self, items):
        t0 = time.perf_counter()
        try:
            return await run(self, items)
        finally:
            elapsed.append(time.perf_counter() - t0)

    engine.Collector.run = timed
    from chainforge.cli import app

    try:
        app(["collect", "--prompts", args.prompts, "--output", args.output, "--concurrency", str(args.concurrency),
             "--expander", "none"], standalone_mode=False)
    except SystemExit as exc:
        if exc.code:
            raise
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"elapsed": elapsed[0], "rss_mb": rss_mb}))


def measure(server_url: str, n: int, client: str, concurrency: int, tmp: Path) -> dict:
    prompts = tmp / f"prompts-{n}.jsonl"
    with open(prompts, "w") as f:
        for i in range(n):
            f.write(json.dumps({"prompt": f"Question {i}: what is {i} times 7?", "answer": str(7 * i)}) + "\n")
    out = tmp / f"out-{client}-{n}"
    env = dict(os.environ, DEEPSEEK_API_KEY="sk-test-fake-key-0123456789", DEEPSEEK_BASE_URL=server_url,
               CHAINFORGE_HOME=str(tmp / "home"))
    env.pop("ANTHROPIC_API_KEY", None)
    proc = subprocess.run([sys.executable, __file__, "--worker", "--client", client, "--prompts", str(prompts),
                           "--output", str(out), "--concurrency", str(concurrency)],
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"collect failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--latency", type=float, default=0.2, help="server latency L in seconds")
    p.add_argument("--concurrency", type=int, default=128, help="requests in flight C")
    p.add_argument("--sizes", type=int, nargs="+", default=[2000, 8000])
    p.add_argument("--compare", action="store_true", help="also httpx2 and httpx 0.28 (at --compare-size)")
    p.add_argument("--compare-size", type=int, default=1000)
    # worker mode (internal)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--client", default="asyncio", help=argparse.SUPPRESS)
    p.add_argument("--prompts", help=argparse.SUPPRESS)
    p.add_argument("--output", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)

    server = subprocess.Popen([sys.executable, str(ROOT / "tests" / "fake_apis.py"), "deepseek",
                               "--latency", str(args.latency)], stdout=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline().split()[1])
        url = f"http://127.0.0.1:{port}"
        ideal = args.concurrency / args.latency
        runs = [("asyncio", n) for n in args.sizes]
        if args.compare:
            runs += [("httpx2", args.compare_size), ("httpx", args.compare_size)]
        print(f"fake DeepSeek at L={args.latency * 1000:.0f} ms, C={args.concurrency} in flight, expander off; "
              f"ideal C/L = {ideal:.1f} req/s")
        print(f"{'client':<8} {'prompts':>7} {'req/s':>8} {'ideal':>7} {'ratio':>6} {'peak RSS MB':>12}")
        with tempfile.TemporaryDirectory() as tmp:
            for client, n in runs:
                r = measure(url, n, client, args.concurrency, Path(tmp))
                rate = n / r["elapsed"]
                print(f"{client:<8} {n:>7} {rate:>8.1f} {ideal:>7.1f} {rate / ideal:>6.2f} {r['rss_mb']:>12.1f}",
                      flush=True)
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()

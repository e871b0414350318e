#!/usr/bin/env python
"""collect's marginal throughput against a fake DeepSeek on 127.0.0.1 answering in L seconds.

    python scripts/bench_collect.py                                  # 1000 and 5000 prompts, C = 128 and 512
    python scripts/bench_collect.py --sizes 2000 10000 --concurrency 512
    python scripts/bench_collect.py --concurrency 128 --both      # streamed and --no-stream, side by side
    python scripts/bench_collect.py --concurrency 128 --both --rounds 3   # three rounds and their median

For each C, `chainforge collect` runs twice, each time in a fresh process (streamed replies, the
expander off), on n1 and n2 prompts. The marginal rate (n2 - n1) / (t2 - t1), t being each process's
wall time, leaves out what both runs pay once — start-up, imports, the final dataset write — and is
compared with the ideal C / L. Also printed: each run's wall time and the peak RSS of the larger
run. The fake server is its own process (it does not share a GIL with collect). With --rounds N
the whole set is measured N times, streamed and --no-stream runs taking turns within a round (so a
change of machine load falls on both), and the median ratio of each is printed with the load
average (1 minute) before and after each round. Figures are measured in this one run; nothing is
asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def worker(args) -> None:
    """One `chainforge collect` in this process; prints its peak RSS in MB as JSON."""
    sys.path.insert(0, str(ROOT))
    from chainforge.cli import app

    try:
        app(["collect", "--prompts", args.prompts, "--output", args.output, "--concurrency", str(args.concurrency),
             "--expander", "none", "--stream" if args.stream else "--no-stream"], standalone_mode=False)
    except SystemExit as exc:
        if exc.code:
            raise
    print(json.dumps({"rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def timed_run(server_url: str, n: int, concurrency: int, tmp: Path, stream: bool = True,
              tag: str = "") -> tuple[float, float]:
    """(wall seconds, peak RSS MB) of one collect process on n prompts."""
    prompts = tmp / f"prompts-{n}.jsonl"
    if not prompts.exists():
        with open(prompts, "w") as f:
            for i in range(n):
                f.write(json.dumps({"prompt": f"Question {i}: what is {i} times 7?", "answer": str(7 * i)}) + "\n")
    out = tmp / f"out-{concurrency}-{n}-{'stream' if stream else 'json'}{tag}"  # a fresh output every run
    env = dict(os.environ, DEEPSEEK_API_KEY="sk-test-fake-key-0123456789", DEEPSEEK_BASE_URL=server_url,
               CHAINFORGE_HOME=str(tmp / "home"), PYTHONPATH=str(ROOT))
    for name in ("ANTHROPIC_API_KEY", "HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy"):
        env.pop(name, None)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--worker", "--prompts", str(prompts), "--output", str(out),
                           "--concurrency", str(concurrency), "--stream" if stream else "--no-stream"],
                          env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"collect failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return wall, json.loads(proc.stdout.strip().splitlines()[-1])["rss_mb"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--latency", type=float, default=0.2, help="server latency L in seconds")
    p.add_argument("--concurrency", type=int, nargs="+", default=[128, 512], help="requests in flight C")
    p.add_argument("--sizes", type=int, nargs=2, default=[1000, 5000], metavar=("N1", "N2"))
    p.add_argument("--both", action="store_true",
                   help="also run with --no-stream (one JSON body per reply), to see what streaming costs")
    p.add_argument("--rounds", type=int, default=1, help="measure everything this many times; print the medians")
    p.add_argument("--stream", action=argparse.BooleanOptionalAction, default=True, help=argparse.SUPPRESS)
    # worker mode (internal)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--prompts", help=argparse.SUPPRESS)
    p.add_argument("--output", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        args.concurrency = args.concurrency[0]
        return worker(args)

    n1, n2 = args.sizes
    server = subprocess.Popen([sys.executable, str(ROOT / "tests" / "helpers" / "fake_apis.py"), "deepseek",
                               "--latency", str(args.latency)], stdout=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline().split()[1])
        url = f"http://127.0.0.1:{port}"
        print(f"fake DeepSeek at L={args.latency * 1000:.0f} ms, expander off; "
              f"runs of {n1} and {n2} prompts; load average {os.getloadavg()[0]:.2f} at start")
        print(f"{'replies':>8} {'C':>5} {'t(n1) s':>8} {'t(n2) s':>8} {'marginal req/s':>15} {'ideal C/L':>10} {'ratio':>6} "
              f"{'peak RSS MB':>12}")
        ratios: dict[tuple[str, int], list[float]] = {}
        with tempfile.TemporaryDirectory() as tmp:
            modes = [True, False] if args.both else [True]
            for r in range(args.rounds):
                if args.rounds > 1:
                    print(f"round {r + 1}: load average {os.getloadavg()[0]:.2f}", flush=True)
                for c in args.concurrency:
                    times: dict[bool, list[float]] = {m: [] for m in modes}
                    rss: dict[bool, float] = {}
                    for n in (n1, n2):  # streamed and json take turns
                        for stream in (modes if r % 2 == 0 else modes[::-1]):
                            wall, rss[stream] = timed_run(url, n, c, Path(tmp), stream, f"-round{r}")
                            times[stream].append(wall)
                    for stream in modes:
                        (t1, t2), name = times[stream], "streamed" if stream else "json"
                        marginal, ideal = (n2 - n1) / (t2 - t1), c / args.latency
                        ratios.setdefault((name, c), []).append(marginal / ideal)
                        print(f"{name:>8} {c:>5} {t1:>8.2f} {t2:>8.2f} {marginal:>15.1f} {ideal:>10.1f} "
                              f"{marginal / ideal:>6.2f} {rss[stream]:>12.1f}", flush=True)
        print(f"load average {os.getloadavg()[0]:.2f} at the end")
        if args.rounds > 1:
            for (name, c), values in ratios.items():
                print(f"median of {len(values)} rounds, {name}, C = {c}: {statistics.median(values):.3f} "
                      f"({' / '.join(f'{v:.2f}' for v in values)})")
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()

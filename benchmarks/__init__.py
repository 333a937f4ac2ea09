"""On-demand benchmarks: the SDK's cost over the raw drivers, and bulk throughput (``python -m benchmarks.run``).

Not a CI gate: numbers on a shared 2-core machine are noisy. Every comparison runs in one process, interleaved
round by round, and reports medians with their spread.
"""

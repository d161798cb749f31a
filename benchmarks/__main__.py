"""``python -m benchmarks``: every strategy of a workload, side by side (see
benchmarks/README.md)."""

from ._common import main

main()

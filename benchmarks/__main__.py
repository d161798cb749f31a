"""``python -m benchmarks``: every strategy of a workload, side by side (see README.md)."""

from ._common import main

main()

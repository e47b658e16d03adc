"""Serving benchmark: a thin wrapper over `hearth bench` (see `hearth.bench`).

    python benchmarks/bench_serving.py [--quick] [--contender monolith ...]

Same options as `hearth bench`; writes reports/bench.{md,json} and the plots.
"""

from __future__ import annotations

import sys

from hearth.cli import app

if __name__ == "__main__":
    app(["bench", *sys.argv[1:]])

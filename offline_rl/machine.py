"""What a measurement ran on: the CPU's model name, for ``make bench``'s header
(benchmarks/bench.py) and the results page's "Machine" line (analysis/results.py)."""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux); where that has none, what ``platform``
    says (processor, else the architecture), or "?"."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "?"

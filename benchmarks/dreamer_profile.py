"""Where one DreamerV3 update spends its time, by operator: torch's profiler around one update
(after one warm-up) at the configuration of benchmarks/dreamer_speed.py (SheepRL's "S" size).

    .venv/bin/python benchmarks/dreamer_profile.py --obs vectors --threads 1

Prints the profiler's table sorted by self CPU time; the shares (not the seconds) are what to read
on a shared machine.
"""

from __future__ import annotations

import sys

import torch
from dreamer_speed import build_wmlab, parse_arguments
from torch.profiler import ProfilerActivity, profile


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    torch.set_num_threads(arguments.threads)
    agent, batch = build_wmlab(arguments)
    agent.update(batch)  # warm-up: allocations, optimiser state
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        agent.update(batch)
    print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=35, max_name_column_width=40))
    return 0


if __name__ == "__main__":
    sys.exit(main())

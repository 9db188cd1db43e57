"""What the step-time benchmarks share: the workload's command-line options (so that wmlab's and
SheepRL's timers are given the same batch), the timing loop, and the memory of the current process
(Linux /proc). Used by benchmarks/dreamer_speed.py, benchmarks/dreamer_step_time.py and
benchmarks/sheeprl_step_time.py; the last runs in SheepRL's own virtual environment, so this module
imports nothing outside the standard library."""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from typing import Callable


def current_rss_bytes() -> int:
    """Resident set size of this process now (Linux /proc)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux >= 4.0: "5" into clear_refs), so that
    the next `peak_rss_bytes` is the peak since now; False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (VmHWM: unlike ru_maxrss it is not inherited from the
    parent across fork and exec); ru_maxrss where /proc is missing."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def add_workload_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that define the timed update's input: observations, actions, batch B x T."""
    parser.add_argument("--obs", default="vectors", choices=["vectors", "pixels"])
    parser.add_argument("--vector-size", type=int, default=5, help="size of the vector observation")
    parser.add_argument("--actions", default="continuous", choices=["continuous", "discrete"])
    parser.add_argument(
        "--action-size",
        type=int,
        default=None,
        help="continuous dimensions, or discrete choices (default 1 continuous, 4 discrete)",
    )
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=64)


def complete_workload_arguments(arguments: argparse.Namespace) -> argparse.Namespace:
    """Fill in the default action size (1 continuous dimension, 4 discrete choices)."""
    if arguments.action_size is None:
        arguments.action_size = 1 if arguments.actions == "continuous" else 4
    return arguments


def timed_calls(function: Callable[[], object], warmup: int, repeats: int) -> list[float]:
    """Seconds of each of `repeats` calls of function(), after `warmup` untimed ones."""
    times = []
    for index in range(warmup + repeats):
        start = time.perf_counter()
        function()
        if index >= warmup:
            times.append(time.perf_counter() - start)
    return times


def measure_steps(function: Callable[[], object], warmup: int, repeats: int) -> dict:
    """Time `repeats` calls of function() after `warmup` untimed ones, with the process's memory:
    the median, minimum and every time, the peak RSS of the process, the peak during the calls
    (None where the kernel's peak mark cannot be reset) and its rise over the RSS before them."""
    peak_before = peak_rss_bytes()
    rss_before = current_rss_bytes()
    peak_was_reset = reset_peak_rss()
    times = timed_calls(function, warmup, repeats)
    peak = peak_rss_bytes()
    return {
        "seconds_per_step_median": round(statistics.median(times), 4) if times else None,
        "seconds_per_step_min": round(min(times), 4) if times else None,
        "seconds_per_step_all": [round(t, 4) for t in times],
        "peak_rss_mib": round(max(peak, peak_before) / 2**20, 1),
        "step_peak_rss_mib": round(peak / 2**20, 1) if peak_was_reset else None,
        "step_peak_rss_increase_mib": round((peak - rss_before) / 2**20, 1),
    }

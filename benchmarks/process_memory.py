"""Memory of the current process (Linux /proc), shared by the speed benchmarks: wmlab's
(benchmarks/dreamer_speed.py) and SheepRL's (benchmarks/sheeprl_step_time.py, run in SheepRL's
own virtual environment, so this module imports nothing outside the standard library)."""

from __future__ import annotations

import resource


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

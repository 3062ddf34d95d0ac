"""Peak resident memory of this process, for the benchmark sides run as their own processes.

``getrusage(RUSAGE_SELF).ru_maxrss`` survives ``execve`` on Linux: a side started by a parent
that had grown large (the whole-file screening holds dozens of decoded scenes) would report the
parent's peak. The kernel's high-water mark of this process's own address space (``VmHWM``)
starts afresh at ``execve``; ru_maxrss only where /proc is not there.
"""
from __future__ import annotations


def peak_rss_mb() -> float:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

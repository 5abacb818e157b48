"""A process's own peak memory, for benchmarks that measure each run in a child process.

``ru_maxrss`` of a child inherits its parent's peak; ``VmHWM`` in ``/proc/self/status``,
read inside the child, is the child's own. Resetting it (``/proc/self/clear_refs``) after
the imports and the setup makes the peak that of the work measured.
"""

import gc


def status(field):
    """A ``/proc/self/status`` memory field (``"VmHWM"``, ``"VmRSS"``) in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"no {field} in /proc/self/status")


def reset_peak():
    """Reset ``VmHWM`` to the resident memory now and return that baseline, in bytes.

    Where the kernel refuses the reset, the peak so far is the baseline.
    """
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return status("VmRSS")
    except OSError:
        return status("VmHWM")

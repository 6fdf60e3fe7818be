"""glibc's allocator tuned for a server that writes responses of a few hundred kilobytes.

By default glibc serves every allocation over 128 KiB with a fresh ``mmap`` (raised at run time
only as such blocks are freed) and gives the top of the heap back to the kernel past 128 KiB
free. A 200 KB address-book answer is joined into one buffer by the transport for each
response, so each one cost page faults for memory the kernel had just zeroed; throughput of
``GET addressbook`` swung by a factor of two with the heap's layout (bench/http_addressbook.py).
Fixed thresholds keep such buffers on the heap and bound what it keeps: at most 16 MiB held
free, blocks over 4 MiB still mapped on their own.
"""

from __future__ import annotations

import ctypes

MMAP_THRESHOLD = 4 * 1024 * 1024
TRIM_THRESHOLD = 16 * 1024 * 1024
_M_TRIM_THRESHOLD = -1  # from glibc's malloc.h
_M_MMAP_THRESHOLD = -3


def tune_malloc() -> bool:
    """Set the thresholds; False where the C library is not glibc (nothing changes)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))

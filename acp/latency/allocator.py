"""A steady memory allocator while timing: glibc's malloc thresholds fixed for the measuring process.

Why: by default glibc adapts its mmap and trim thresholds as the program runs. A forward pass allocates and
frees activation buffers of a few megabytes; depending on how the heap happens to be laid out, the freed
memory is either kept (the next forward reuses it) or returned to the system (the next forward page-faults
it back in). The same model then has two latencies: torchvision's ResNet-18 at 224 px, batch 1, one
thread, measured 30 ms in some passes and 55 ms in others on a 2-core AMD EPYC VM, while a half-width
candidate stayed at 15 ms, so its measured ratio to the base jumped between 0.27 and 0.50. Fixing the
thresholds (mmap 32 MiB, glibc's own upper limit; trim 64 MiB) removed the second mode (base 30-34 ms in
every pass; ``benchmarks/RESULTS.md``, "Latency ratio noise").

That is what PyTorch's CPU performance guide recommends for inference anyway (a caching allocator such as
jemalloc or tcmalloc); deploy with ``MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=67108864``
(or one of those allocators) to run at the latency acp measured. The setting lasts for the rest of the
process, holds at most 64 MiB of freed memory, and does nothing where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import platform

MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit systems
TRIM_THRESHOLD_BYTES = 64 * 1024 * 1024
_M_TRIM_THRESHOLD = -1  # mallopt parameter numbers from glibc's malloc.h
_M_MMAP_THRESHOLD = -3


@functools.cache
def steady_allocator() -> str:
    """Fix glibc's malloc thresholds for this process (once) and describe the allocator latency is
    measured with (part of a latency table's cache key)."""
    if platform.libc_ver()[0] != "glibc":
        return "system default"
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mmap_set = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
        trim_set = libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    except (OSError, AttributeError):
        return "system default"
    if not (mmap_set and trim_set):
        return "system default"
    return f"glibc mmap_threshold={MMAP_THRESHOLD_BYTES} trim_threshold={TRIM_THRESHOLD_BYTES}"

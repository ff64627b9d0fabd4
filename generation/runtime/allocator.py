"""The C allocator's mmap threshold: freed KV goes back to the system.

Each running sequence's keys and values are one block of some 5-40 MB
(generation.runtime.seqkv), allocated by glibc's malloc, grown by copying,
and freed or handed to the prefix cache when the reply ends. glibc serves
a request of at least M_MMAP_THRESHOLD bytes with a mapping of its own,
returned to the system by `free`; smaller ones come from the heap (an arena
per thread), where freed space stays in the process's RSS until the top of
the heap is free. The threshold starts at 128 KB but is dynamic: each time
a mapped chunk is freed, glibc raises it to that chunk's size, up to 32 MB
on 64-bit systems (glibc's mallopt(3), "M_MMAP_THRESHOLD"). After the first
few replies end, the next blocks therefore come from the heap, and the
holes that freed blocks of other sizes leave there kept some 200-300 MB of
RSS at 16 conversations (docs/benchmarks.md, "Through the service: memory
at 16 conversations": 2,053 MB without, 1,864 MB with
MALLOC_MMAP_THRESHOLD_=1048576).

Setting the threshold with mallopt fixes it (and turns the dynamic raising
off), as the environment variable MALLOC_MMAP_THRESHOLD_ would at process
start. Allocations below it, which are most of a forward pass's small
tensors, still come from the heap; those above it cost an mmap, a munmap
and page faults on first touch (a 30 MB block's growth: 25-42 ms at load
average 5, generation.runtime.seqkv; not yet measured end to end on a
quiet machine).
"""

import ctypes
import ctypes.util
import logging

logger = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # glibc's malloc.h
MAX_THRESHOLD = 32 * 2**20  # HEAP_MAX_SIZE / 2 on 64-bit: mallopt refuses more


def set_mmap_threshold(nbytes: int) -> bool:
    """Make glibc serve every allocation of `nbytes` or more with a mapping
    of its own, returned to the system when freed (and stop it moving the
    threshold). Called once, by the model thread, before it loads the model;
    process-wide. 0 leaves glibc's default alone. Returns whether the
    threshold was set: False for 0, and (logged) on a C library without
    mallopt (musl, macOS) or a value glibc refuses (above 32 MB)."""
    if nbytes <= 0:
        return False
    if nbytes > MAX_THRESHOLD:
        logger.warning("The malloc mmap threshold of %d bytes is above glibc's 32 MB; not set.", nbytes)
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        logger.info("This C library has no mallopt; the malloc mmap threshold is not set.")
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if mallopt(M_MMAP_THRESHOLD, nbytes) != 1:
        logger.warning("mallopt refused an mmap threshold of %d bytes.", nbytes)
        return False
    return True

"""Process settings of the training and evaluation commands (not of the library: importing changes nothing).

glibc's malloc serves a large allocation (above its adaptive threshold, 32 MiB at most) with a fresh ``mmap``
and returns it to the kernel when freed, so every forward of the frozen model over a long prompt (its attention
and MLP activations are tens to hundreds of MiB) faults its pages in again and has the kernel zero them: a
default training run spent 13% of its CPU time in the kernel. :func:`reuse_freed_memory` makes the main heap
serve every size and keep what is freed (up to 1 GiB at its top), so the next forward reuses the same pages.
``bench/allocator.py`` measures the effect in one run; ``TOKENKEEP_MALLOC=default`` in the environment keeps
glibc's defaults.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
_M_MMAP_MAX = -4
_KEEP_BYTES = 1 << 30


def reuse_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse; returns whether it was applied.

    Not applied (False) where the C library is not glibc (macOS, musl), or with ``TOKENKEEP_MALLOC=default``.
    """
    if os.environ.get("TOKENKEEP_MALLOC", "") == "default":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    # no mmap'd blocks (threads other than the main one still get them where their arena's heap cannot grow),
    # and the heap's top is given back to the kernel only above 1 GiB
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES))

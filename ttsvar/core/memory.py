"""Hand the heap memory a run has freed back to the operating system.

glibc's allocator keeps the pages of freed blocks for reuse, so a CPU process holds far more resident memory
than it uses: after each unit of a TTS-VAR job most of the unit's peak stayed resident (docs/benchmarks.md,
"Memory during a run"). `release_free_memory` calls glibc's `malloc_trim(0)`, which returns the free pages of
every arena; the engine's `Worker` calls it when a unit is collected or dropped, when `runtime.release_memory` is
true (the default). It frees nothing that is in use, so no result changes. Trimming after every scale step as
well lowered the peak within a unit by a fifth but cost about 15% of the wall time (the next step faults the
pages in again), so the engine does not. Elsewhere (musl, macOS, Windows) there is no `malloc_trim` and it does
nothing.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable


def _find_malloc_trim() -> Callable[[int], int] | None:
    try:
        fn = ctypes.CDLL(None).malloc_trim  # the C library the interpreter already links
    except (OSError, AttributeError, TypeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return fn


_MALLOC_TRIM = _find_malloc_trim()


def can_release_memory() -> bool:
    """Whether this C library can hand freed heap pages back (glibc)."""
    return _MALLOC_TRIM is not None


def release_free_memory() -> bool:
    """Return the free heap pages of every arena to the OS; False where the C library cannot."""
    if _MALLOC_TRIM is None:
        return False
    _MALLOC_TRIM(0)
    return True

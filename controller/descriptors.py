"""HAProxy's connection limit from the file-descriptor limit it will run under (pure + one read).

HAProxy reserves a descriptor for every server that has a check, parked (disabled) slots
included, and with no `maxconn` it derives one from what is left: with 25,000 checked slots
under a 20,000-descriptor limit it picked `maxconn 100` and, with `strict-limits` (2.6's
default), refused to start. Weighbridge pre-provisions slots so that filling one stays a
runtime change, so that reservation is mostly for slots that never check. We therefore set
`maxconn` ourselves (`--maxconn`, by default a quarter of the hard descriptor limit, leaving
the rest to checks that actually run and to listeners) and render `no strict-limits`, so a
reservation over the limit is HAProxy's warning, not a failed start (docs/health.md).
"""

from __future__ import annotations

import resource

MIN_MAXCONN = 256
MAX_MAXCONN = 4_000_000
UNLIMITED_DESCRIPTORS = 1_048_576
"""What an unlimited (`RLIM_INFINITY`) descriptor limit counts as (Linux's default nr_open)."""


def default_maxconn(hard_limit: int) -> int:
    """A quarter of the descriptors: two per proxied connection leaves half for checks."""
    return max(MIN_MAXCONN, min(MAX_MAXCONN, hard_limit // 4))


def hard_descriptor_limit() -> int:
    """The hard RLIMIT_NOFILE HAProxy inherits from us (it raises its soft limit up to it)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return UNLIMITED_DESCRIPTORS if hard == resource.RLIM_INFINITY else hard

"""Random bytes for ids and tokens, from OpenSSL's CSPRNG: it never lets go of the GIL.

Why not ``secrets``: ``os.urandom`` releases the GIL around its system call, and under gunicorn's
threads each release on the request path is a hand-off to another thread and back (a context
switch each way). A token issue drew randomness four times, so four hand-offs; together they cost
more CPU than the random bytes themselves (``make bench``, README). ``ssl.RAND_bytes`` is OpenSSL's
DRBG: seeded from the operating system, reseeded by OpenSSL in a forked child (gunicorn preloads
the app, then forks; ``tests/test_entropy.py`` checks the children draw apart), and in-process.
"""

from __future__ import annotations

import ssl


def token_bytes(count: int) -> bytes:
    """``count`` cryptographically strong random bytes."""
    return ssl.RAND_bytes(count)


def token_hex(count: int) -> str:
    """``count`` random bytes as ``2 * count`` lowercase hex digits."""
    return token_bytes(count).hex()

"""mcsync: one-to-many database replication over encrypted UDP multicast.

A :class:`Publisher` journals each committed update durably and multicasts it once, sealed
with AES-256-GCM; every :class:`Subscriber` registers over TLS, applies each update to its
own LMDB replica and repairs what it missed over the same authenticated channel. See
docs/PYTHON.md for a tour.

Every open publisher, subscriber and subscription is closed at interpreter exit (an
``atexit`` hook calling :func:`close_all`), so a script that forgets to close still exits.
"""

import atexit
import collections.abc

from ._mcsync import (
    AuthError,
    ClosedError,
    ConfigError,
    Database,
    Error,
    Grant,
    IoError,
    Op,
    Prepared,
    ProtocolError,
    Publisher,
    RefusedError,
    Relay,
    ResyncReport,
    StorageError,
    Subscriber,
    Subscription,
    TimeoutError,
    TooLargeError,
    Transaction,
    Update,
    UpdateIterator,
    __version__,
    add_user,
    close_all,
    refresh_log_levels,
)

__all__ = [
    "AuthError",
    "ClosedError",
    "ConfigError",
    "Database",
    "Error",
    "Grant",
    "IoError",
    "Op",
    "Prepared",
    "ProtocolError",
    "Publisher",
    "RefusedError",
    "Relay",
    "ResyncReport",
    "StorageError",
    "Subscriber",
    "Subscription",
    "TimeoutError",
    "TooLargeError",
    "Transaction",
    "Update",
    "UpdateIterator",
    "__version__",
    "add_user",
    "close_all",
    "refresh_log_levels",
]

# A Subscription is a read-only mapping of bytes to bytes (the native class cannot inherit
# from the ABC, so it is registered: isinstance(sub, collections.abc.Mapping) holds).
collections.abc.Mapping.register(Subscription)

# Registered at import, so it runs after the atexit hooks a program registers later
# (atexit runs last-in first-out) and before the interpreter tears down.
atexit.register(close_all)

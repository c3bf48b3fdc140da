"""Type stubs of the native module ``mcsync._mcsync`` (checked by ``mypy.stubtest``)."""

import builtins
from collections.abc import Callable, ItemsView, Iterator, KeysView, Mapping, ValuesView
from os import PathLike
from types import TracebackType
from typing import Any, ClassVar, Literal, TypeVar, final, overload

_T = TypeVar("_T")
_Bytes = bytes | bytearray | str
_Address = str | tuple[str, int]
_Path = str | PathLike[str]
_Schedule = Literal["always", "never"] | list[tuple[int, int]]
_Vote = Callable[[Update], bool | str | None]
# A list of access groups or database names (a lone str is refused at run time).
_Names = list[str] | tuple[str, ...]
_Operation = Literal["put", "delete"]
_Durability = Literal["sync", "async"]
_ReplicaDurability = Literal["sync", "periodic", "none"]
_PreparedState = Literal["prepared", "committing", "committed", "rolled back", "failed"]

__version__: str
__all__ = [
    "Publisher",
    "Database",
    "Transaction",
    "Prepared",
    "Relay",
    "Subscriber",
    "Subscription",
    "UpdateIterator",
    "ResyncReport",
    "Update",
    "Op",
    "Grant",
    "add_user",
    "close_all",
    "refresh_log_levels",
    "Error",
    "ConfigError",
    "IoError",
    "StorageError",
    "ProtocolError",
    "AuthError",
    "ClosedError",
    "TimeoutError",
    "TooLargeError",
    "RefusedError",
    "__version__",
]

def add_user(
    path: _Path,
    user: str,
    password: str,
    databases: _Names | None = None,
    groups: _Names | None = None,
    participant: bool = False,
) -> None:
    """Adds a user to a users file (creating the file and its directory)."""

def close_all() -> None:
    """Closes every open subscriber (with its subscriptions), then every publisher."""

def refresh_log_levels() -> None:
    """Makes changed levels of the ``mcsync.*`` loggers take effect."""

class Error(Exception):
    """Base class of every error mcsync raises."""

class ConfigError(Error, ValueError):
    """Invalid configuration or argument (also a ValueError)."""

class TimeoutError(Error, builtins.TimeoutError):
    """A deadline passed (also the builtin TimeoutError)."""

class IoError(Error):
    """An operating-system I/O failure (socket, file)."""

class StorageError(Error):
    """The LMDB store failed or holds data it cannot read."""

class ProtocolError(Error):
    """A peer sent something that violates the protocol."""

class AuthError(Error):
    """Authentication or authorization failed."""

class ClosedError(Error):
    """The object was closed."""

class TooLargeError(Error):
    """A key, value or update exceeds a configured maximum."""

class RefusedError(Error):
    """Refused: an unknown database, missing versions, or an aborted two-phase update."""

    refused: tuple[tuple[str, str], ...]
    """An aborted two-phase update: ``(participant, reason)`` for each that refused."""
    timed_out: tuple[str, ...]
    """An aborted two-phase update: the participants that did not answer in time."""

@final
class Grant:
    """What an authenticated user may do; returned by an ``authenticator``."""

    def __new__(
        cls,
        databases: _Names | None = None,
        groups: _Names | None = None,
        participant: bool = False,
    ) -> Grant: ...
    @property
    def databases(self) -> tuple[str, ...] | None: ...
    @property
    def groups(self) -> tuple[str, ...]: ...
    @property
    def participant(self) -> bool:
        """Whether the user may register as a two-phase participant."""

@final
class Op:
    """One operation of an update: a put or a delete of one key."""

    @property
    def operation(self) -> _Operation:
        """``"put"`` or ``"delete"``."""
    @property
    def key(self) -> bytes:
        """The record key."""
    @property
    def value(self) -> bytes | None:
        """The new value of a put; ``None`` for a delete."""
    @property
    def groups(self) -> tuple[str, ...]:
        """Access groups allowed to read the record; empty means everyone."""

@final
class Update:
    """One committed master transaction of a database."""

    @property
    def version(self) -> int:
        """The master version this update produced."""
    @property
    def timestamp(self) -> float:
        """When the publisher committed it, in seconds since the Unix epoch."""
    @property
    def reset(self) -> bool:
        """Whether this update replaces the host's whole state (see ``subscribe(after=)``)."""
    @property
    def ops(self) -> tuple[Op, ...]:
        """The operations, in order."""
    @property
    def operation(self) -> _Operation:
        """``"put"`` or ``"delete"`` of a single-operation update."""
    @property
    def key(self) -> bytes:
        """The key of a single-operation update."""
    @property
    def value(self) -> bytes | None:
        """The value of a single-operation update (``None`` for a delete)."""
    @property
    def groups(self) -> tuple[str, ...]:
        """The access groups of a single-operation update."""
    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[Op]: ...

@final
class Prepared:
    """A prepared two-phase update; a context manager that commits on success."""

    @property
    def version(self) -> int:
        """The version the update has once committed."""
    @property
    def database(self) -> str:
        """Name of the database."""
    @property
    def state(self) -> _PreparedState:
        """``"prepared"``, ``"committing"``, ``"committed"``, ``"rolled back"`` or ``"failed"``."""
    def commit(self) -> int:
        """Journals the update durably, multicasts COMMIT and returns the version."""
    def rollback(self) -> None:
        """Retracts the update; the version is given back."""
    def __enter__(self) -> Prepared: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
        /,
    ) -> None: ...

@final
class Transaction:
    """A pending master transaction; a context manager that commits on success."""

    def put(self, key: _Bytes, value: _Bytes, groups: _Names | None = None) -> None:
        """Adds a put of ``value`` at ``key``."""
    def delete(self, key: _Bytes) -> None:
        """Adds a delete of ``key``."""
    def commit(self) -> int:
        """Journals the transaction durably and returns its version."""
    def commit_two_phase(self, timeout: float | None = None) -> int:
        """Two-phase commit: waits for every participant's vote, then commits."""
    def prepare(self, timeout: float | None = None) -> Prepared:
        """The first phase alone: returns a ``Prepared`` to commit or roll back."""
    def rollback(self) -> None:
        """Discards the transaction."""
    @property
    def version(self) -> int | None:
        """The committed version, or ``None``."""
    def __len__(self) -> int: ...
    def __enter__(self) -> Transaction: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
        /,
    ) -> None: ...

@final
class Database:
    """One published database."""

    @property
    def name(self) -> str: ...
    @property
    def version(self) -> int: ...
    @property
    def key_epoch(self) -> int: ...
    def rotate_key(self) -> int:
        """Rotates this database's key now; returns the new epoch."""
    @property
    def group(self) -> tuple[str, int]: ...
    def put(self, key: _Bytes, value: _Bytes, groups: _Names | None = None) -> int:
        """Sets ``key`` to ``value`` and returns the new version."""
    def delete(self, key: _Bytes) -> int:
        """Deletes ``key`` and returns the new version."""
    @overload
    def get(self, key: _Bytes, default: None = None) -> bytes | None:
        """The master's value of ``key``, or ``default``."""
    @overload
    def get(self, key: _Bytes, default: bytes) -> bytes: ...
    @overload
    def get(self, key: _Bytes, default: _T) -> bytes | _T: ...
    def items(self) -> list[tuple[bytes, bytes]]:
        """Every record of the master state in key order."""
    def transaction(
        self, *, two_phase: bool = False, timeout: float | None = None
    ) -> Transaction:
        """Starts a transaction (committed in two phases with ``two_phase=True``)."""

@final
class Publisher:
    """The master side; a context manager."""

    def __new__(
        cls,
        data_dir: _Path,
        *,
        group: str | None = None,
        group_count: int | None = None,
        port: int | None = None,
        port_count: int | None = None,
        control_addr: _Address | None = None,
        interface: str | None = None,
        ttl: int | None = None,
        certificate: _Path | None = None,
        private_key: _Path | None = None,
        insecure_loopback: bool = False,
        users: _Path | None = None,
        authenticator: Callable[[str, str, tuple[str, int]], Grant | bool | None]
        | None = None,
        open_access: bool = False,
        key_rotation_interval: float | None = None,
        schedule: _Schedule | None = None,
        rotate_key_at_window_start: bool = False,
        multicast_on_first_subscription: bool = False,
        datagram_bytes: int | None = None,
        max_packets_per_sec: int | None = None,
        max_bytes_per_sec: int | None = None,
        max_update_bytes: int | None = None,
        map_size: int | None = None,
        retention_max_bytes: int | None = None,
        retention_max_age: float | None = None,
        retention_min_count: int | None = None,
        retention_min_free_disk_bytes: int | None = None,
        durability: _Durability = "sync",
        registration_expiry: float | None = None,
        max_unicast_targets: int | None = None,
    ) -> Publisher: ...
    @property
    def fingerprint(self) -> str | None:
        """SHA-256 fingerprint of the control channel's certificate."""
    def revoke(self, user: str) -> None:
        """Cuts ``user`` off and rotates every database's key."""
    def flush(self) -> None:
        """Waits until every commit that has returned is journaled durably."""
    def apply_retention(self) -> int:
        """Trims every database's journal now; returns the entries removed."""
    def subscribers(self) -> list[dict[str, Any]]:
        """The subscribers currently registered."""
    def set_schedule(self, schedule: _Schedule) -> None:
        """Changes the multicast schedule."""
    def database(self, name: str) -> Database:
        """The database called ``name``, created on first use."""
    @property
    def control_addr(self) -> tuple[str, int]:
        """``(host, port)`` of the control (repair) server."""
    @property
    def closed(self) -> bool: ...
    def stats(self) -> dict[str, int]:
        """A snapshot of the publisher's counters."""
    def metrics(self) -> str:
        """Counters, gauges and subscriber reports in the OpenMetrics text format."""
    def close(self) -> None:
        """Stops every thread. Idempotent."""
    def __enter__(self) -> Publisher: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
        /,
    ) -> None: ...

@final
class Relay:
    """Re-publishes databases of an upstream publisher; a context manager."""

    def __new__(
        cls,
        *,
        upstream: dict[str, Any],
        downstream: dict[str, Any],
        databases: list[str],
    ) -> Relay: ...
    @property
    def fingerprint(self) -> str | None:
        """SHA-256 fingerprint of the relay's own certificate."""
    @property
    def control_addr(self) -> tuple[str, int]:
        """``(host, port)`` downstream subscribers connect to."""
    def version(self, name: str) -> int:
        """The version database ``name`` is relayed up to."""
    def key_epoch(self, name: str) -> int:
        """The relay's own key epoch of database ``name``."""
    def rotate_key(self, name: str) -> int:
        """Rotates the relay's key of database ``name``; returns the new epoch."""
    def revoke(self, user: str) -> None:
        """Cuts downstream ``user`` off."""
    def stats(self) -> dict[str, int]:
        """The relay's own counters."""
    @property
    def closed(self) -> bool: ...
    def close(self) -> None:
        """Stops the upstream subscriptions, then the relay's publisher. Idempotent."""
    def __enter__(self) -> Relay: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
        /,
    ) -> None: ...

@final
class UpdateIterator:
    """Iterator returned by ``Subscription.updates()``."""

    def __iter__(self) -> UpdateIterator: ...
    def __next__(self) -> Update: ...

@final
class ResyncReport:
    """What ``Subscriber.verify()`` found and ``Subscriber.resync()`` did."""

    @property
    def version(self) -> int: ...
    @property
    def previous_version(self) -> int: ...
    @property
    def full_copy(self) -> bool: ...
    @property
    def fetched(self) -> int: ...
    @property
    def deleted(self) -> int: ...
    @property
    def journal_updates(self) -> int: ...
    @property
    def differing_ranges(self) -> list[tuple[int, int]]: ...
    @property
    def bytes(self) -> int: ...
    @property
    def local_records(self) -> int: ...
    @property
    def remote_records(self) -> int: ...
    @property
    def in_agreement(self) -> bool: ...

@final
class Subscription(Mapping[bytes, bytes]):
    """A live replica of one database: a read-only mapping of bytes to bytes."""

    __hash__: ClassVar[None]  # type: ignore[assignment]

    @property
    def name(self) -> str: ...
    @property
    def version(self) -> int: ...
    @property
    def closed(self) -> bool: ...
    @property
    def participant(self) -> bool: ...
    def request_resync(self) -> None:
        """Asks the subscription's thread to resync the replica by hashes now."""
    @overload
    def get(self, key: _Bytes, default: None = None) -> bytes | None:
        """The replica's value of ``key``, or ``default``."""
    @overload
    def get(self, key: _Bytes, default: bytes) -> bytes: ...
    @overload
    def get(self, key: _Bytes, default: _T) -> bytes | _T: ...
    def __getitem__(self, key: _Bytes, /) -> bytes: ...
    def __contains__(self, key: object, /) -> bool: ...
    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[bytes]: ...
    def __eq__(self, other: object, /) -> bool: ...
    def keys(self) -> KeysView[bytes]:
        """The keys of one consistent version, in key order."""
    def values(self) -> ValuesView[bytes]:
        """The values of one consistent version, in key order."""
    def items(self) -> ItemsView[bytes, bytes]:
        """Every record of one consistent version in key order."""
    def wait_for_version(self, version: int, timeout: float | None = None) -> None:
        """Waits until the replica reaches ``version``."""
    def wait_caught_up(self, timeout: float | None = None) -> int:
        """Waits until the replica and its callbacks reached the publisher's version at
        registration; returns that version."""
    def wait_until_current(self, timeout: float | None = None) -> int:
        """Waits until the replica and its callbacks reached the publisher's version now;
        returns that version."""
    def updates(self, timeout: float | None = None) -> UpdateIterator:
        """Iterates over updates as they are applied (pull style)."""
    def stats(self) -> dict[str, int]:
        """A snapshot of the subscription's counters."""
    def close(self) -> None:
        """Stops the subscription's threads. Idempotent."""
    def __enter__(self) -> Subscription: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
        /,
    ) -> None: ...

@final
class Subscriber:
    """The replica side; a context manager."""

    def __new__(
        cls,
        data_dir: _Path,
        *,
        control_addr: _Address | None = None,
        server: _Address | None = None,
        fingerprint: str | None = None,
        ca_file: _Path | None = None,
        server_name: str | None = None,
        insecure_loopback: bool = False,
        user: str = "",
        secret: str = "",
        interface: str | None = None,
        loss: float | None = None,
        loss_seed: int = 0,
        loss_burst: int = 1,
        recv_buffer_bytes: int | None = None,
        channel_capacity: int | None = None,
        reorder_buffer_bytes: int | None = None,
        repair_delay: float | None = None,
        repair_retry: float | None = None,
        repair_io_timeout: float | None = None,
        silence_timeout: float | None = None,
        max_update_bytes: int | None = None,
        map_size: int | None = None,
        client_name: str | None = None,
        compact_catch_up_after: int | None = None,
        replica_durability: _ReplicaDurability = "periodic",
        replica_flush_interval: float | None = None,
        unicast: bool = False,
    ) -> Subscriber: ...
    def subscribe(
        self,
        name: str,
        on_update: Callable[[Update], object] | None = None,
        *,
        on_error: Callable[[BaseException, Update | None], object] | None = None,
        queue_size: int = 10000,
        participant: bool = False,
        vote: _Vote | None = None,
        after: int | None = None,
    ) -> Subscription:
        """Subscribes to database ``name`` (as a two-phase participant if asked)."""
    def verify(self, name: str) -> ResyncReport:
        """Compares the local replica of ``name`` with the publisher, changing nothing."""
    def resync(self, name: str) -> ResyncReport:
        """Makes the local replica of ``name`` equal to the publisher's state by hashes."""
    @property
    def control_addr(self) -> tuple[str, int]: ...
    @property
    def server(self) -> tuple[str, int]:
        """Deprecated name of ``control_addr``."""
    def metrics(self) -> str:
        """Every subscription's counters and latency in the OpenMetrics text format."""
    @property
    def closed(self) -> bool: ...
    def close(self) -> None:
        """Closes every subscription. Idempotent."""
    def __enter__(self) -> Subscriber: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
        /,
    ) -> None: ...

"""The origin's metadata schema and database engine: SQLite (embedded default) or PostgreSQL.

One schema and one code path for both, in SQLAlchemy Core; the dialects differ only in how a
write transaction takes its locks, which `Database.write` hides:

- SQLite: ``BEGIN IMMEDIATE`` takes the database's write lock first, so what a transaction
  reads cannot change under it (other processes wait, up to ``busy_timeout``). WAL mode with
  ``synchronous=FULL``: a committed transaction survives a power cut, readers never block.
- PostgreSQL: a transaction-scoped advisory lock per key given to ``write(*locks)`` (taken in
  sorted order, so two transactions never deadlock), released at commit. Several origin
  processes on several machines then check and count the same rows one at a time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Float,
    Index,
    MetaData,
    Table,
    Text,
    create_engine,
    event,
    inspect,
    text,
)
from sqlalchemy.engine import make_url

from ..errors import ConfigError

SCHEMA_VERSION = 2

metadata = MetaData()

uploads = Table(
    "uploads", metadata,
    Column("media_id", Text, primary_key=True),
    Column("owner", Text),  # JWT sub of the uploader; NULL for uploads from before auth
    Column("protocol", Text, nullable=False, server_default="signed-put"),  # or tus, direct
    Column("file_type", Text, nullable=False),  # declared; informational (the blob is opaque)
    Column("declared_size", BigInteger, nullable=False),
    Column("declared_sha256", Text, nullable=False),  # lowercase hex of the encrypted blob
    Column("state", Text, nullable=False),  # pending, uploaded, committed, failed
    Column("received", BigInteger, nullable=False, server_default="0"),  # = resume offset
    Column("received_sha256", Text),  # hash of the staged bytes, known when streamed whole
    Column("staging_name", Text),  # staging file (or object) name; NULL once gone
    Column("expires_at", BigInteger, nullable=False),  # the upload URL's expiry (unix s)
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("blob_sha256", Text),  # set when committed
    Column("thumb_sha256", Text),  # thumbnail blob given with this upload's confirm
    Column("failure", Text),  # error code of the failed check, or expired / terminated
    Column("conversation_id", Text),  # optional; per-conversation rate limit (schema 2)
    Column("resume_until", BigInteger),  # an unfinished upload expires then (schema 2)
    Index("uploads_by_state_expiry", "state", "expires_at"),
    Index("uploads_by_owner", "owner", "created_at"),
    Index("uploads_by_conversation", "conversation_id", "created_at"),
    Index("uploads_by_state_resume", "state", "resume_until"),
)  # fmt: skip

media = Table(
    "media", metadata,
    Column("sha256", Text, primary_key=True),  # committed blob, served at /v/t1/<sha256>
    Column("size", BigInteger, nullable=False),
    Column("thumb_sha256", Text),  # served at /v/t1/<sha256>/thumb; the first one wins
    Column("created_at", Float, nullable=False),
)  # fmt: skip

profile_photos = Table(
    "profile_photos", metadata,
    Column("user", Text, primary_key=True),  # quoted by SQLAlchemy: reserved in PostgreSQL
    Column("sha256", Text, nullable=False),
    Column("content_type", Text, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("updated_at", Float, nullable=False),
)  # fmt: skip


replication = Table(
    "replication", metadata,
    Column("sha256", Text, primary_key=True),  # a committed media or thumbnail blob
    Column("target", Text, primary_key=True),  # the replica store, as configured
    Column("done_at", Float, nullable=False),
)  # fmt: skip


def database_url(spec: str, default: Path) -> str:
    """The SQLAlchemy URL of ``origin.database`` ("" = the SQLite file ``default``)."""
    if not spec:
        return f"sqlite:///{default}"
    if spec.startswith(("postgresql://", "postgres://")):
        # psycopg 3 is the driver we ship; "postgresql://" alone would ask for psycopg2.
        return "postgresql+psycopg://" + spec.split("://", 1)[1]
    if spec.startswith(("postgresql+", "sqlite:")):
        return spec
    if "://" in spec:
        raise ConfigError(f"origin.database {spec!r}: expected a postgresql:// URL or a "
                          "SQLite file path")  # fmt: skip
    return f"sqlite:///{Path(spec).expanduser().resolve()}"


def _advisory_key(name: str) -> int:
    # A signed 64-bit key for pg_advisory_xact_lock, the same in every process.
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big",
                          signed=True)  # fmt: skip


class Database:
    """An engine plus the write-transaction discipline of its dialect."""

    def __init__(self, url: str) -> None:
        parsed = make_url(url)
        self.dialect = parsed.get_backend_name()
        if self.dialect == "sqlite":
            if parsed.database:
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            self.engine = create_engine(url, connect_args={"check_same_thread": False})
            event.listen(self.engine, "connect", _sqlite_connect)
            event.listen(self.engine, "begin", _sqlite_begin)
        elif self.dialect == "postgresql":
            # a server that does not answer fails a connection in 5 s (libpq waits forever),
            # and a request waits 10 s at most for a pooled connection: then 503
            self.engine = create_engine(url, pool_size=8, max_overflow=8, pool_pre_ping=True,
                                        pool_timeout=10, connect_args={"connect_timeout": 5})
        else:
            raise ConfigError(f"origin.database: unsupported database {self.dialect!r}")
        self._create()

    def _create(self) -> None:
        with self.write() as conn:
            if self.dialect == "sqlite":
                version = conn.exec_driver_sql("PRAGMA user_version").scalar() or 0
                if version > SCHEMA_VERSION:
                    raise RuntimeError(f"the database has schema version {version}, newer "
                                       f"than this edgeproxy understands "
                                       f"({SCHEMA_VERSION})")  # fmt: skip
            else:
                # Two origins starting together must not both create the tables.
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"),
                             {"k": _advisory_key("edgeproxy:schema")})  # fmt: skip
            existing = inspect(conn).get_table_names()
            if "uploads" in existing:
                columns = {c["name"] for c in inspect(conn).get_columns("uploads")}
                if "resume_until" not in columns:  # a schema-1 database
                    conn.exec_driver_sql("ALTER TABLE uploads ADD COLUMN conversation_id TEXT")
                    conn.exec_driver_sql("ALTER TABLE uploads ADD COLUMN resume_until BIGINT")
            metadata.create_all(conn)
            if self.dialect == "sqlite":
                conn.exec_driver_sql(f"PRAGMA user_version={SCHEMA_VERSION}")

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A connection for reads (a deferred transaction, rolled back at the end)."""
        with self.engine.connect() as conn:
            yield conn

    @contextmanager
    def write(self, *locks: str) -> Iterator[Connection]:
        """One write transaction, serialised against every other that names a lock in
        ``locks`` (SQLite: against every other write)."""
        conn = self.engine.connect()
        if self.dialect == "sqlite":
            conn = conn.execution_options(sqlite_immediate=True)
        try:
            with conn.begin():
                for name in sorted(set(locks)):
                    if self.dialect == "postgresql":
                        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"),
                                     {"k": _advisory_key(name)})  # fmt: skip
                yield conn
        finally:
            conn.close()

    def try_lock(self, name: str) -> Connection | None:
        """PostgreSQL: a session-level advisory lock on ``name`` held by the returned
        connection (give it to `unlock`), or None if another session holds it. The server
        drops it if this process dies, so a crash never leaves an upload locked."""
        conn = self.engine.connect()
        try:
            got = conn.execute(text("SELECT pg_try_advisory_lock(:k)"),
                               {"k": _advisory_key(name)}).scalar()  # fmt: skip
            conn.commit()
        except BaseException:
            conn.close()
            raise
        if not got:
            conn.close()
            return None
        return conn

    def unlock(self, conn: Connection, name: str) -> None:
        """Release a lock `try_lock` took."""
        try:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _advisory_key(name)})
            conn.commit()
        finally:
            conn.close()

    def close(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # SQLAlchemy emits BEGIN itself (below), so the driver must not open transactions.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    # busy_timeout first, so that worker processes opening the database together wait.
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    immediate = conn.get_execution_options().get("sqlite_immediate", False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

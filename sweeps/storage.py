"""Where a study lives, and the lock that lets several workers share its trial budget.

* ``sqlite:///sweeps/studies/<study>.db`` (the default): one machine, one or several workers.
* ``postgresql://user:password@host/db``: workers on several machines share one study.
* ``journal:///shared/fs/<study>.log``: Optuna's journal file, for a shared file system
  without a database server (no heartbeat there: a killed worker's trial stays running).

Workers agree on "is there room for one more trial?" under a lock that covers the count and
the creation of the trial: a PostgreSQL advisory lock (held by a connection, so released when
a killed worker's connection drops), or an ``flock`` on a file beside the SQLite database or
the journal (released by the kernel when the process dies).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend, JournalStorage

from core.errors import ConfigError
from core.paths import STUDIES

# a running trial beats every ``interval`` s; one silent for ``grace`` s is failed and retried
HEARTBEAT = {"interval": 10, "grace": 60}


def default_storage(study: str, studies: str | Path = STUDIES) -> str:
    path = Path(studies).resolve() / f"{study}.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def driver_url(url: str) -> str:
    """``postgresql://`` with the psycopg (3) driver that this package installs (SQLAlchemy
    2.0 would pick psycopg2 for the bare scheme)."""
    return (
        "postgresql+psycopg://" + url.removeprefix("postgresql://")
        if url.startswith("postgresql://")
        else url
    )


def shown(url: str) -> str:
    """The URL as printed: a database password replaced by ***."""
    if url.startswith(("postgresql", "mysql")):
        import sqlalchemy as sa

        return sa.make_url(url).render_as_string(hide_password=True)
    return url


def open_storage(url: str, heartbeat: dict | None = None) -> optuna.storages.BaseStorage:
    """An Optuna storage for ``url``. With a database, trials send a heartbeat every
    ``interval`` s; one silent for ``grace`` s is failed and retried once (as a new trial)."""
    if url.startswith("journal://"):
        path = Path(url.removeprefix("journal://"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if not url.startswith(("sqlite:", "postgresql", "mysql")):
        raise ConfigError(
            f"storage {url!r}: expected sqlite:///FILE, postgresql://... or journal:///FILE"
        )
    check_sqlite(url)
    hb = heartbeat or {}
    kw = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    import sqlalchemy as sa

    for attempt in range(3):
        try:
            return RDBStorage(
                driver_url(url),
                engine_kwargs=kw,
                heartbeat_interval=int(hb.get("interval", HEARTBEAT["interval"])),
                grace_period=int(hb.get("grace", HEARTBEAT["grace"])),
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1),
            )
        except (sa.exc.IntegrityError, sa.exc.ProgrammingError, sa.exc.OperationalError) as e:
            # workers starting at once on a new database both create its tables: the second
            # finds them on the next try (SQLite says "table ... already exists"); any other
            # operational error (a refused connection) is not a race
            racing = not isinstance(e, sa.exc.OperationalError) or "already exists" in str(e)
            if attempt == 2 or not racing:
                raise ConfigError(
                    f"cannot open storage {shown(url)}: {e}".splitlines()[0]
                ) from None
            time.sleep(1 + attempt)
        except Exception as e:  # an unreachable server, a wrong password, a missing driver
            raise ConfigError(f"cannot open storage {shown(url)}: {e}".splitlines()[0]) from None


def _damaged(url: str, why: str) -> ConfigError:
    return ConfigError(
        f"the study database {url.removeprefix('sqlite:///')} is damaged ({why}): restore it "
        "from a backup, or start a new study (another --study, --storage or --studies)"
    )


def check_sqlite(url: str) -> None:
    """A SQLite study file damaged inside (overwritten bytes, a truncated copy) is an error
    naming it. SQLite finds such damage only on the pages a query reads, so anywhere in a sweep;
    ``PRAGMA quick_check`` reads them all at once (milliseconds for a study)."""
    if not url.startswith("sqlite:///"):
        return
    path = Path(url.removeprefix("sqlite:///"))
    if not path.is_file():
        return  # a new study
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=60)) as c:
            rows = c.execute("PRAGMA quick_check").fetchall()
    except sqlite3.OperationalError:
        return  # locked, unreadable: the storage's own error says more
    except sqlite3.DatabaseError as e:  # "file is not a database", "disk image is malformed"
        raise _damaged(url, str(e)) from None
    if rows != [("ok",)]:
        raise _damaged(url, str(rows[0][0]).splitlines()[0])


@contextlib.contextmanager
def damage_is_an_error(url: str) -> Iterator[None]:
    """SQLite's "database disk image is malformed" (SQLAlchemy's DatabaseError, also inside
    Optuna's StorageInternalError) raised by study calls, as a ConfigError naming the file."""
    import sqlalchemy as sa

    try:
        yield
    except (sa.exc.DatabaseError, optuna.exceptions.StorageInternalError) as e:
        err = e if isinstance(e, sa.exc.DatabaseError) else e.__cause__
        # the exact class: its subclasses are a locked database, a bad query, a constraint
        if url.startswith("sqlite") and type(err) is sa.exc.DatabaseError:
            raise _damaged(url, str(err.orig).splitlines()[0]) from None
        raise


@contextlib.contextmanager
def budget_lock(url: str, study: str) -> Iterator[None]:
    """Held while a worker counts the study's trials and creates the next one."""
    if url.startswith("postgresql"):
        import sqlalchemy as sa

        key = int.from_bytes(hashlib.blake2b(study.encode(), digest_size=8).digest(), "big")
        key -= 1 << 63  # PostgreSQL's bigint is signed
        engine = sa.create_engine(driver_url(url), poolclass=sa.pool.NullPool)
        try:
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": key})
                try:
                    yield
                finally:
                    conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        finally:
            engine.dispose()
        return
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
    elif url.startswith("journal://"):
        path = Path(url.removeprefix("journal://"))
    else:  # another database: no lock; the last trials may overshoot by a worker or two
        yield
        return
    with open(path.with_name(path.name + ".budget-lock"), "a") as f:  # not Optuna's .lock
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def heartbeat_ages(storage: optuna.storages.BaseStorage, trial_ids: list[int]) -> dict[int, float]:
    """Seconds since each trial's last heartbeat, on the database's clock (the one Optuna's
    stale-trial check reads); empty for a storage without heartbeats."""
    import sqlalchemy as sa
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    if not isinstance(storage, RDBStorage) or not trial_ids:
        return {}
    beat = models.TrialHeartbeatModel
    with _create_scoped_session(storage.scoped_session) as session:
        now = session.execute(sa.func.now()).scalar_one().replace(tzinfo=None)
        rows = session.query(beat.trial_id, beat.heartbeat).filter(beat.trial_id.in_(trial_ids))
        return {i: (now - t.replace(tzinfo=None)).total_seconds() for i, t in rows.all()}

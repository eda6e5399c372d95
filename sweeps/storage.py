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
from collections.abc import Iterator
from pathlib import Path

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend, JournalStorage

from affbench.errors import ConfigError

STUDIES = Path("sweeps/studies")


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
    hb = heartbeat or {}
    kw = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    try:
        return RDBStorage(
            driver_url(url),
            engine_kwargs=kw,
            heartbeat_interval=int(hb.get("interval", 10)),
            grace_period=int(hb.get("grace", 60)),
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1),
        )
    except Exception as e:  # an unreachable server, a wrong password, a missing driver
        raise ConfigError(f"cannot open storage {shown(url)}: {e}".splitlines()[0]) from None


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

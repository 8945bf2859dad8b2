"""Is the MLflow store a run would be recorded in usable? Checked before anything trains.

Standard library only, so `python run.py` can refuse a bad store within seconds, before it
imports torch, Lightning or MLflow (an unreachable server otherwise costs minutes of retries).
"""

from __future__ import annotations

import os
import socket
import sqlite3
import ssl
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from .config import ConfigError


#: URI schemes MLflow 3 has a tracking store for (MLflow's tracking service registers these;
#: "" is a plain path, i.e. a file store). A database URI may name its
#: driver after a "+" (postgresql+psycopg2://...).
STORE_SCHEMES = ("", "file", "sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks", "databricks-uc", "uc")

#: The first 16 bytes of every SQLite 3 database file.
SQLITE_HEADER = b"SQLite format 3\x00"

#: How long a tracking server may take to answer the reachability probe, in seconds.
PROBE_TIMEOUT_S = 5.0

#: How long the check waits on a SQLite store another process is writing, in seconds: as long
#: as MLflow itself waits (its sessions set `PRAGMA busy_timeout = 20000`), so a store that is
#: merely busy, e.g. with a second launch of a study writing to it, is not refused.
SQLITE_BUSY_TIMEOUT_S = 20.0


def check_store(uri: str, experiment: str) -> None:
    """Refuse, with one line, a store no run could be recorded in; reads it, never writes.

    Runs before anything trains: without it an unreachable server makes MLflow retry for
    minutes, and a file that is not an MLflow database is only found when the run is created.
    """
    if not experiment.strip():
        raise ConfigError(f"tracking.experiment='{experiment}' is empty; name the MLflow experiment, e.g. tracking.experiment=lenet5")
    scheme = uri.split("://", 1)[0].split("+", 1)[0].lower() if "://" in uri else ""
    if scheme not in STORE_SCHEMES:
        raise ConfigError(
            f"tracking.uri={uri}: unknown scheme '{scheme}'; use sqlite:////ABSOLUTE/PATH.db, "
            f"http(s)://HOST:PORT (an mlflow server) or another MLflow store ({', '.join(s for s in STORE_SCHEMES if s)})"
        )
    if scheme == "sqlite":
        _check_sqlite_store(uri, experiment)
    elif scheme in ("http", "https"):
        _check_server(uri)


def sqlite_path(uri: str) -> Path | None:
    """The database file a sqlite:// URI names (sqlite:///rel.db -> rel.db, sqlite:////abs.db ->
    /abs.db), or None for an in-memory store."""
    path_text = uri.split("://", 1)[1].removeprefix("/").split("?", 1)[0]
    return None if path_text in ("", ":memory:") else Path(path_text).expanduser()


def artifact_location(uri: str, artifact_root: str | None) -> str | None:
    """Where a new experiment of store `uri` keeps its artifacts: `artifact_root` when set;
    else beside a SQLite store's file (`<its folder>/mlartifacts`), so that a store copied or
    deleted as a folder takes its artifacts with it; else (a server, a file store) None, which
    leaves it to MLflow."""
    if uri.startswith(("http://", "https://", "databricks")):
        return None
    if artifact_root:
        return artifact_root
    path = sqlite_path(uri) if uri.startswith("sqlite:") else None
    return str(path.resolve().parent / "mlartifacts") if path is not None else None


def _check_sqlite_store(uri: str, experiment: str) -> None:
    """The file is absent (MLflow creates it) in a writable folder, or an MLflow SQLite store
    where `experiment`, if present, is not deleted."""
    path = sqlite_path(uri)
    if path is None:
        raise ConfigError(f"tracking.uri={uri} is an in-memory store that keeps nothing; use sqlite:////ABSOLUTE/PATH.db")
    if not path.parent.is_dir():
        raise ConfigError(f"tracking.uri={uri}: folder {path.parent} does not exist; create it or point tracking.uri elsewhere")
    if not path.exists():
        try:  # a real write, not os.access: root passes os.access even where nothing can be written
            with tempfile.TemporaryFile(dir=path.parent):
                pass
        except OSError as err:
            raise ConfigError(f"tracking.uri={uri}: cannot create files in {path.parent} ({err.strerror}); point tracking.uri elsewhere") from None
        return
    if not path.is_file():
        raise ConfigError(f"tracking.uri={uri}: {path} is not a file; point tracking.uri at a .db file")
    with path.open("rb") as f:
        header = f.read(len(SQLITE_HEADER))
    if header and header != SQLITE_HEADER:
        raise ConfigError(f"tracking.uri={uri}: {path} is not a SQLite database; point tracking.uri at an MLflow .db file or a new path")
    if not os.access(path, os.W_OK):
        raise ConfigError(f"tracking.uri={uri}: {path} is not writable; point tracking.uri elsewhere")
    if not header:  # an empty file: MLflow makes it a store
        return
    # Read-only: looking must leave the file byte for byte as it was.
    connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=SQLITE_BUSY_TIMEOUT_S)
    try:
        tables = {row[0] for row in connection.execute("select name from sqlite_master where type = 'table'")}
        if "experiments" not in tables:
            raise ConfigError(f"tracking.uri={uri}: {path} is a SQLite database but not an MLflow store; point tracking.uri at a new path")
        found = connection.execute("select lifecycle_stage from experiments where name = ?", (experiment,)).fetchone()
    except sqlite3.DatabaseError as err:
        busy = (getattr(err, "sqlite_errorcode", None) or 0) & 0xFF == sqlite3.SQLITE_BUSY  # low byte: the primary result code
        if busy:
            raise ConfigError(
                f"tracking.uri={uri}: {path} has been locked by another process's write for over "
                f"{SQLITE_BUSY_TIMEOUT_S:g} s (a suspended or hung process?); resume or end it, then run again"
            ) from None
        raise ConfigError(f"tracking.uri={uri}: {path} cannot be read as a SQLite database ({err})") from None
    finally:
        connection.close()
    if found is not None and found[0] == "deleted":
        raise ConfigError(
            f"tracking.experiment={experiment} is deleted in {uri}; restore it "
            f"(mlflow experiments restore) or choose another tracking.experiment"
        )


def _check_server(uri: str) -> None:
    """A plain GET of `<uri>/health` (every mlflow server answers it) with a short timeout."""
    url = uri.rstrip("/") + "/health"
    context = None
    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
        # No certificate or host name check, as MLflow itself does with that variable.
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT_S, context=context):
            return
    except urllib.error.HTTPError as err:
        if err.code != 404:
            return  # it answers (e.g. 401 behind an auth proxy): MLflow reports its own errors
        raise ConfigError(f"tracking.uri={uri}: {url} answers 404, so no mlflow server is at that address") from None
    except (urllib.error.URLError, socket.timeout, OSError) as err:
        reason = getattr(err, "reason", err)
        raise ConfigError(
            f"tracking.uri={uri}: no MLflow server answered within {PROBE_TIMEOUT_S:.0f} s ({reason}); "
            f"start one (mlflow server --port PORT) or use the local store (leave tracking.uri unset)"
        ) from None

"""Where results go: the Optuna storage and the MLflow tracking store (local files by default)."""

from __future__ import annotations

import contextlib
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from ..writable import check_writable

DEFAULT_RESULTS = "freezebench-results"
_SCHEMES = {"--storage": ("sqlite", "postgresql", "mysql", "oracle", "mssql"),
            "--tracking-uri": ("sqlite", "postgresql", "mysql", "mssql", "http", "https", "file", "databricks")}


@dataclass(frozen=True)
class Stores:
    results_dir: Path
    optuna_url: str
    tracking_uri: str
    artifact_root: str | None

    @classmethod
    def resolve(cls, results_dir: str | None = None, storage: str | None = None, tracking_uri: str | None = None) -> "Stores":
        """Defaults: ``./freezebench-results/optuna.db`` and ``mlflow.db`` (SQLite) with artifacts beside."""
        root = Path(results_dir or os.environ.get("FREEZEBENCH_RESULTS") or DEFAULT_RESULTS).resolve()
        optuna_url = storage or os.environ.get("FREEZEBENCH_STORAGE") or sqlite_url(root / "optuna.db")
        uri = tracking_uri or os.environ.get("FREEZEBENCH_TRACKING_URI") or sqlite_url(root / "mlflow.db")
        artifacts = (root / "mlartifacts").as_uri() if uri.startswith("sqlite:") else None  # a URI: MLflow decodes %XX
        return cls(root, optuna_url, uri, artifacts)

    def check(self, writing: bool = False) -> None:
        """Refuse stores that cannot work, before anything is written: a URL that is none, a SQLite file
        in a folder that does not exist, an existing file that is not an SQLite database, a server that does
        not answer; and, when ``writing``, local stores in a folder or in files that cannot be written."""
        from ..errors import UserError

        for what, url, option in (("Optuna storage", self.optuna_url, "--storage"), ("MLflow tracking URI", self.tracking_uri, "--tracking-uri")):
            scheme = url.split("://", 1)[0].split("+", 1)[0] if "://" in url else ""
            allowed = _SCHEMES[option]
            if scheme not in allowed:
                raise UserError(f"{option} {url!r} is no {what} freezebench can use: give a URL starting with "
                                f"{', '.join(s + '://' for s in allowed)}.")
            if scheme != "sqlite":
                continue
            path = sqlite_file(url)
            if path is None or (not path.parent.is_dir() and path.parent != self.results_dir):  # results_dir: made by prepare()
                raise UserError(f"{option} {url!r}: the folder {path.parent if path else url} does not exist. Create it, "
                                "or name a file in an existing folder.")
            if path.is_file():
                size = path.stat().st_size
                with open(path, "rb") as f:
                    head = f.read(16)
                if size == 0:
                    raise UserError(f"{path} is empty (0 bytes): not a {what.split()[0]} store (a run stopped while creating "
                                    "it, or a full disk). It holds no results: delete it, then run again.")
                if head != b"SQLite format 3\x00":
                    raise UserError(f"{path} is not an SQLite database (it is not a {what.split()[0]} store freezebench "
                                    f"wrote, or it is damaged). Move it away, or pass --results-dir for a new folder.")

        if writing:
            self._check_writable()
        self._check_server()

    def _check_writable(self) -> None:
        """Local stores need a folder they can write in (the results dir, or the nearest folder that exists
        above it, where it will be made) and store files they can write to."""
        from ..errors import UserError

        if not (self.optuna_url.startswith("sqlite:") or self.local_tracking):
            return
        check_writable(self.results_dir, f"The results dir {self.results_dir}",
                       "Pass --results-dir with a folder you can write to, or set FREEZEBENCH_RESULTS.")
        for url in (self.optuna_url, self.tracking_uri):
            path = sqlite_file(url)
            if path is not None and path.is_file() and not os.access(path, os.W_OK):
                raise UserError(f"{path} is read-only: freezebench adds every trial to it. Make it writable "
                                "(chmod u+w), or pass --results-dir for a new folder.")

    def _check_server(self, timeout: float = 5.0) -> None:
        """An MLflow server that does not answer is named at once (MLflow itself retries for minutes)."""
        import urllib.error
        import urllib.request

        from ..errors import UserError

        if not self.tracking_uri.startswith(("http://", "https://")):
            return
        try:
            urllib.request.urlopen(self.tracking_uri.rstrip("/") + "/health", timeout=timeout).close()
        except urllib.error.HTTPError:
            return  # it answers (a proxy or an older server without /health): MLflow reports what it says
        except (urllib.error.URLError, OSError) as exc:
            why = getattr(exc, "reason", exc)
            raise UserError(f"Cannot reach the MLflow tracking server at {self.tracking_uri} ({why}). Start it "
                            "(mlflow server, or freezebench ui for local results), or check --tracking-uri / "
                            "FREEZEBENCH_TRACKING_URI.") from None

    @property
    def local_tracking(self) -> bool:
        return self.tracking_uri.startswith("sqlite:")

    def prepare(self) -> None:
        if self.optuna_url.startswith("sqlite:") or self.local_tracking:
            self.results_dir.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def lock(self):
        """Hold the results dir's lock file (local stores only): creating or migrating a SQLite
        schema is not safe when two processes do it at once (MLflow's migrations fail half-way)."""
        if not (self.optuna_url.startswith("sqlite:") or self.local_tracking):
            yield
            return
        try:
            import fcntl
        except ImportError:  # no POSIX locks (Windows): run unlocked
            yield
            return
        with open(self.results_dir / ".freezebench.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def create_whole(self, url: str, create) -> None:
        """Open the store at ``url`` with ``create(url)``; a local SQLite store that does not exist yet is
        made in a side file and renamed into place once its schema is complete, so a kill or a full disk
        during creation never leaves a half-made store that breaks later runs."""
        path = sqlite_file(url)
        if path is None or path.exists():
            create(url)
            return
        for left in path.parent.glob(f".{path.name}.*.creating"):  # left by a creation that was killed: holds nothing
            left.unlink(missing_ok=True)
        side = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.creating")  # new name: no cached engine reuses it
        try:
            create(sqlite_url(side))
            os.replace(side, path)
        finally:
            side.unlink(missing_ok=True)

    def relocate_artifacts(self) -> str | None:
        """A results dir moved or copied: MLflow records each artifact location as an absolute URI, so its runs
        would still read (and a resumed run write) artifacts in the old folder, or find none there. When this
        folder holds ``mlartifacts/`` and ``mlflow.db`` names another one, point every location into this
        folder (experiments, runs, registered model versions, logged models). Returns what was done, or None."""
        import sqlite3

        from ..errors import UserError

        db = sqlite_file(self.tracking_uri) if self.local_tracking else None
        here = self.results_dir / "mlartifacts"
        if db is None or self.artifact_root is None or db != self.results_dir / "mlflow.db" or not db.is_file() or not here.is_dir():
            return None  # a tracking DB named by hand, or nothing moved along: the locations are the user's own
        with contextlib.closing(sqlite3.connect(db, timeout=60)) as con:
            try:
                recorded = {loc.rsplit("/", 1)[0] for (loc,) in con.execute("SELECT artifact_location FROM experiments") if loc}
            except sqlite3.Error:
                return None  # no schema yet (or a damaged file: named by check())
            old = sorted(r for r in recorded if r.endswith("/mlartifacts") and _local_dir(r) not in (None, here))
            if not old:
                return None
            columns = {t: {row[1] for row in con.execute(f"PRAGMA table_info({t})")} for t in _ARTIFACT_COLUMNS}
            try:
                with con:  # one transaction: every location moves, or none
                    for prefix in old:
                        for table, names in _ARTIFACT_COLUMNS.items():
                            for name in names & columns[table]:
                                con.execute(f"UPDATE {table} SET {name} = ? || substr({name}, ?) WHERE substr({name}, 1, ?) = ?",
                                            (self.artifact_root + "/", len(prefix) + 2, len(prefix) + 1, prefix + "/"))
            except sqlite3.OperationalError as exc:
                raise UserError(f"{db} records its artifacts in {', '.join(str(_local_dir(p)) for p in old)}, not in "
                                f"{here} beside it (the folder was moved or copied), and cannot be updated ({exc}). Make it "
                                "writable, then run the command again.") from None
        return (f"This results dir was moved or copied from {', '.join(str(_local_dir(p).parent) for p in old)}: "
                f"its artifact locations now point into {here}.")

    def exists(self) -> bool:
        return not self.local_tracking or sqlite_file(self.tracking_uri).is_file()


def _local_dir(location: str) -> Path | None:
    """The folder of a local artifact location: a ``file://`` URI (percent-decoded) or, as freezebench recorded
    them before 2026-12-07, a plain absolute path; None for any other store (s3://, mlflow-artifacts:, ...)."""
    from urllib.parse import unquote, urlparse

    if location.startswith("file://"):
        return Path(unquote(urlparse(location).path))
    return Path(location) if location.startswith("/") else None


_ARTIFACT_COLUMNS = {"experiments": {"artifact_location"}, "runs": {"artifact_uri"},
                     "model_versions": {"source", "storage_location"}, "logged_models": {"artifact_location"}}


def sqlite_url(path: Path) -> str:
    """The SQLite URL of a file, its path percent-encoded: SQLAlchemy decodes ``%XX`` in a URL's database
    part and ends it at ``?`` (a query) or ``#``, and Optuna fills ``{...}`` in a storage URL as a template,
    so a results dir named ``100%20``, ``a?b`` or ``{x}`` would otherwise be another file, or none."""
    from urllib.parse import quote

    return "sqlite:///" + quote(str(path), safe="/")


def sqlite_file(url: str) -> Path | None:
    """The file of a ``sqlite:///PATH`` URL, as SQLAlchemy reads it (``%XX`` decoded, a ``?query`` dropped);
    None for any other store."""
    if not url.startswith("sqlite:///"):
        return None
    from sqlalchemy.engine import make_url

    try:
        database = make_url(url).database
    except Exception:  # not a URL SQLAlchemy can read: named by check()
        return None
    return Path(database) if database else None

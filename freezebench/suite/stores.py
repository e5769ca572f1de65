"""Where results go: the Optuna storage and the MLflow tracking store (local files by default)."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_RESULTS = "freezebench-results"


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
        optuna_url = storage or os.environ.get("FREEZEBENCH_STORAGE") or f"sqlite:///{root / 'optuna.db'}"
        uri = tracking_uri or os.environ.get("FREEZEBENCH_TRACKING_URI") or f"sqlite:///{root / 'mlflow.db'}"
        artifacts = str(root / "mlartifacts") if uri.startswith("sqlite:") else None
        return cls(root, optuna_url, uri, artifacts)

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

    def exists(self) -> bool:
        return not self.local_tracking or Path(self.tracking_uri.removeprefix("sqlite:///")).is_file()

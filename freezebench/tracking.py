"""MLflow tracking: one experiment per dataset, a parent run per study, a nested run per trial."""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from .trial import TrialResult

TAG = "freezebench"


def _quiet() -> None:
    for name in ("alembic", "mlflow", "mlflow.store", "mlflow.tracking"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _finite(metrics: dict[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}


class Tracker:
    def __init__(self, tracking_uri: str, artifact_root: str | None = None):
        _quiet()
        from mlflow.tracking import MlflowClient

        self.tracking_uri = tracking_uri
        self.artifact_root = artifact_root
        self.client = MlflowClient(tracking_uri=tracking_uri)

    def experiment_id(self, dataset: str) -> str:
        exp = self.client.get_experiment_by_name(dataset)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                self.client.restore_experiment(exp.experiment_id)
            return exp.experiment_id
        location = f"{self.artifact_root}/{dataset}" if self.artifact_root else None
        return self.client.create_experiment(dataset, artifact_location=location, tags={f"{TAG}.dataset": dataset})

    def study_run(self, experiment_id: str, study: str, tags: dict[str, str], params: dict[str, Any]) -> str:
        """The study's parent run: reopened if this study ran before, created otherwise."""
        found = self.client.search_runs(
            [experiment_id], f"tags.`{TAG}.role` = 'study' and tags.`{TAG}.study` = '{study}'", max_results=1
        )
        if found:
            run_id = found[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
            return run_id
        run = self.client.create_run(
            experiment_id, run_name=study, tags={f"{TAG}.role": "study", f"{TAG}.study": study, **tags}
        )
        self._log_params(run.info.run_id, params)
        return run.info.run_id

    def start_trial(
        self, experiment_id: str, parent_id: str, name: str, tags: dict[str, str], params: dict[str, Any]
    ) -> str:
        run = self.client.create_run(
            experiment_id,
            run_name=name,
            tags={"mlflow.parentRunId": parent_id, f"{TAG}.role": "trial", f"{TAG}.state": "running", **tags},
        )
        self._log_params(run.info.run_id, params)
        return run.info.run_id

    def _log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i : i + 100])

    def log_epoch(self, run_id: str, epoch: int, record: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, epoch) for k, v in _finite(record).items()]
        self.client.log_batch(run_id, metrics=metrics)

    def finish_trial(self, run_id: str, result: TrialResult, tags: dict[str, str]) -> None:
        from mlflow.entities import Metric, RunTag

        out = result.outcome
        final = {
            **{f"best_val_{k}": v for k, v in out.best_val.items()},
            **{f"test_{k}": v for k, v in out.test.items()},
            "best_epoch": out.best_epoch,
            "trainable_params": result.trainable_params,
            "total_params": result.total_params,
            "wall_time_s": result.wall_seconds,
        }
        now = int(time.time() * 1000)
        self.client.log_batch(
            run_id,
            metrics=[Metric(k, v, now, 0) for k, v in _finite(final).items()],
            tags=[RunTag(k, v) for k, v in {**tags, f"{TAG}.state": "complete"}.items()],
        )
        self.client.log_dict(run_id, result.plan.as_dict() | {"units": result.units}, "freeze_plan.json")
        self.client.log_dict(run_id, result.config.as_flat_dict(), "trial_config.json")
        if result.events:
            self.client.log_dict(run_id, result.events, "unfreeze_events.json")
        self.client.set_terminated(run_id, "FINISHED")

    def end_trial(self, run_id: str, state: str, reason: str = "") -> None:
        """Close a trial that did not finish: state 'pruned' (KILLED) or 'failed' (FAILED)."""
        self.client.set_tag(run_id, f"{TAG}.state", state)
        if reason:
            self.client.set_tag(run_id, f"{TAG}.fail_reason", reason[:5000])
        self.client.set_terminated(run_id, "KILLED" if state == "pruned" else "FAILED")

    def finish_study(self, run_id: str, metrics: dict[str, float], tags: dict[str, str]) -> None:
        from mlflow.entities import Metric, RunTag

        now = int(time.time() * 1000)
        self.client.log_batch(
            run_id,
            metrics=[Metric(k, v, now, 0) for k, v in _finite(metrics).items()],
            tags=[RunTag(k, v) for k, v in tags.items()],
        )
        self.client.set_terminated(run_id, "FINISHED")

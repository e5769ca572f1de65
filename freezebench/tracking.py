"""MLflow tracking: one experiment per dataset, a parent run per study, a nested run per trial."""

from __future__ import annotations

import logging
import os
import math
import time
from typing import Any

from .trial import TrialResult

TAG = "freezebench"


def _quiet() -> None:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no tqdm bars for every small artifact
    for name in ("alembic", "mlflow", "mlflow.store", "mlflow.tracking"):
        logging.getLogger(name).setLevel(logging.WARNING)


def log_arrays(client, run_id: str, arrays: dict, name: str) -> None:
    """Numpy arrays as one compressed .npz artifact at ``name`` (may include a folder)."""
    import os
    import tempfile

    import numpy as np

    folder, file = os.path.split(name)
    with tempfile.TemporaryDirectory() as tmp:
        np.savez_compressed(os.path.join(tmp, file), **arrays)
        client.log_artifact(run_id, os.path.join(tmp, file), folder or None)


def load_arrays(client, run_id: str, name: str) -> dict | None:
    """A .npz artifact as a dict of arrays; None when the run has no such artifact."""
    import os
    import tempfile

    import numpy as np

    folder = os.path.dirname(name)
    if name not in {a.path for a in client.list_artifacts(run_id, folder or None)}:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        with np.load(client.download_artifacts(run_id, name, tmp), allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}


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
        from mlflow.exceptions import MlflowException

        try:
            return self.client.create_experiment(dataset, artifact_location=location, tags={f"{TAG}.dataset": dataset})
        except MlflowException:  # another worker created it a moment ago
            exp = self.client.get_experiment_by_name(dataset)
            if exp is None:
                raise
            return exp.experiment_id

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

    def reopen(self, run_id: str) -> None:
        if self.client.get_run(run_id).info.status != "RUNNING":
            self.client.update_run(run_id, status="RUNNING")

    def start_trial(
        self, experiment_id: str, parent_id: str, name: str, tags: dict[str, str], params: dict[str, Any], role: str = "trial"
    ) -> str:
        run = self.client.create_run(
            experiment_id,
            run_name=name,
            tags={"mlflow.parentRunId": parent_id, f"{TAG}.role": role, f"{TAG}.state": "running", **tags},
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

    def finish_trial(self, run_id: str, result: TrialResult, tags: dict[str, str] | None = None) -> None:
        from mlflow.entities import Metric, RunTag

        tags = {f"{TAG}.frozen_units": ",".join(result.plan.frozen) or "-", f"{TAG}.prefix_cache": result.prefix_cache,
                f"{TAG}.compute": result.compute, **(tags or {})}

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
        self._log_params(run_id, {"weights_source": result.weights_source, "weights_sha256": result.weights_sha256 or "-",
                                  "frozen_unit_names": ", ".join(result.plan.frozen) or "-"})
        self.client.log_dict(run_id, result.plan.as_dict() | {"units": result.units}, "freeze_plan.json")
        self.client.log_dict(run_id, result.config.as_flat_dict(), "trial_config.json")
        if result.events:
            self.client.log_dict(run_id, result.events, "unfreeze_events.json")
        if result.outputs is not None:
            from .analysis import trial_analyses

            for item in trial_analyses(result.outputs):
                if item.figure is not None:
                    import matplotlib.pyplot as plt

                    self.client.log_figure(run_id, item.figure, item.name)
                    plt.close(item.figure)
                if item.data is not None:
                    self.client.log_dict(run_id, item.data, item.name)
                if item.arrays is not None:
                    log_arrays(self.client, run_id, item.arrays, item.name)
        if out.test_probs is not None:
            from .figures import log_test_figures

            log_test_figures(self.client, run_id, out.test_labels, out.test_probs, result.class_names)
        self.client.set_terminated(run_id, "FINISHED")

    def trial_config(self, run_id: str) -> dict[str, Any]:
        import json
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            path = self.client.download_artifacts(run_id, "trial_config.json", tmp)
            with open(path) as f:
                return json.load(f)

    def confirm_seeds_done(self, experiment_id: str, run_id: str) -> set[int]:
        runs = self.client.search_runs([experiment_id], f"tags.`{TAG}.confirm_of` = '{run_id}' and attributes.status = 'FINISHED'")
        return {int(r.data.params["seed"]) for r in runs}

    def store_leaderboard(self, dataset: str, metric: str) -> None:
        """Keep the dataset's leaderboard as artifacts of a 'leaderboard' run in its experiment."""
        from .leaderboard import leaderboard, to_csv, to_markdown

        exp_id = self.experiment_id(dataset)
        rows = leaderboard(self, dataset, metric)
        found = self.client.search_runs([exp_id], f"tags.`{TAG}.role` = 'leaderboard'", order_by=["attributes.start_time ASC"], max_results=1)
        run_id = found[0].info.run_id if found else self.client.create_run(
            exp_id, run_name=f"leaderboard: {dataset}", tags={f"{TAG}.role": "leaderboard", f"{TAG}.dataset": dataset}).info.run_id
        self.client.log_text(run_id, to_csv(rows), "leaderboard.csv")
        self.client.log_text(run_id, to_markdown(rows, metric, dataset), "leaderboard.md")
        self.client.set_tag(run_id, "mlflow.note.content", to_markdown(rows[:20], metric, dataset))
        self.client.set_terminated(run_id, "FINISHED")

    def end_trial(self, run_id: str, state: str, reason: str = "", only_if_running: bool = False) -> None:
        """Close a trial that did not finish: 'pruned' or 'interrupted' (KILLED), 'failed' (FAILED)."""
        if only_if_running and self.client.get_run(run_id).info.status != "RUNNING":
            return
        self.client.set_tag(run_id, f"{TAG}.state", state)
        if reason:
            self.client.set_tag(run_id, f"{TAG}.fail_reason", reason[:5000])
        self.client.set_terminated(run_id, "FAILED" if state == "failed" else "KILLED")

    def finish_study(self, run_id: str, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in _finite(metrics).items()])
        self.client.set_terminated(run_id, "FINISHED")

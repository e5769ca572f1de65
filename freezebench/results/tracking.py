"""MLflow tracking: one experiment per dataset, a parent run per study, a nested run per trial."""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..analysis import Output, pyplot
from ..records import TrialResult
from . import layout


def _quiet() -> None:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no tqdm bars for every small artifact
    for name in ("alembic", "mlflow", "mlflow.store", "mlflow.tracking"):
        logging.getLogger(name).setLevel(logging.WARNING)


def log_arrays(client, run_id: str, arrays: dict, name: str) -> None:
    """Numpy arrays as one compressed .npz artifact at ``name`` (may include a folder)."""
    folder, file = os.path.split(name)
    with tempfile.TemporaryDirectory() as tmp:
        np.savez_compressed(os.path.join(tmp, file), **arrays)
        client.log_artifact(run_id, os.path.join(tmp, file), folder or None)


def load_arrays(client, run_id: str, name: str) -> dict | None:
    """A .npz artifact as a dict of arrays; None when the run has no such artifact."""
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

    def experiment_id(self, dataset: str, about: dict[str, str] | None = None) -> str:
        """The experiment of dataset label ``dataset``, created when missing. ``about``: what it holds
        (``layout.DATASET_PLUGIN``, ``layout.CLASSES``), recorded on it (see ``experiment_clash``)."""
        about = about or {}
        exp = self.client.get_experiment_by_name(dataset)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                self.client.restore_experiment(exp.experiment_id)
            for k, v in about.items():  # an experiment from before these tags learns them on first use
                if k not in exp.tags:
                    self.client.set_experiment_tag(exp.experiment_id, k, v)
            return exp.experiment_id
        location = f"{self.artifact_root.rstrip('/')}/{layout.path_component(dataset)}" if self.artifact_root else None
        from mlflow.exceptions import MlflowException

        try:
            return self.client.create_experiment(dataset, artifact_location=location, tags={layout.DATASET: dataset, **about})
        except MlflowException:  # another worker created it a moment ago
            exp = self.client.get_experiment_by_name(dataset)
            if exp is None:
                raise
            return exp.experiment_id

    def experiment_clash(self, dataset: str, about: dict[str, str]) -> str | None:
        """What the existing experiment of ``dataset`` recorded that differs from ``about`` ("classes a,b"),
        or None: two tasks under one label would share a leaderboard."""
        exp = self.client.get_experiment_by_name(dataset)
        if exp is None:
            return None
        differ = [f"{k.removeprefix(layout.tag(''))} {exp.tags[k]!r}" for k, v in about.items() if k in exp.tags and exp.tags[k] != v]
        return ", ".join(differ) or None

    def study_run(self, experiment_id: str, study: str, tags: dict[str, str], params: dict[str, Any]) -> str:
        """The study's parent run: reopened if this study ran before, created otherwise."""
        found = self.client.search_runs([experiment_id], layout.where(layout.STUDY, study=study), max_results=1)
        if found:
            run_id = found[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
            return run_id
        run = self.client.create_run(
            experiment_id, run_name=study, tags={layout.ROLE: layout.STUDY, layout.STUDY_NAME: study, **tags}
        )
        self._log_params(run.info.run_id, params)
        return run.info.run_id

    def reopen(self, run_id: str) -> None:
        if self.client.get_run(run_id).info.status != "RUNNING":
            self.client.update_run(run_id, status="RUNNING")

    def start_trial(
        self, experiment_id: str, parent_id: str, name: str, tags: dict[str, str], params: dict[str, Any], role: str = layout.TRIAL
    ) -> str:
        run = self.client.create_run(
            experiment_id,
            run_name=name,
            tags={layout.PARENT: parent_id, layout.ROLE: role, layout.STATE: "running", **tags},
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

    def finish_trial(self, run_id: str, result: TrialResult, outputs: list[Output] = (), metrics: dict[str, float] | None = None,
                     tags: dict[str, str] | None = None, model_dir: Path | None = None) -> None:
        """Record a complete trial: final metrics (and ``metrics``), tags, plan and config, its ``outputs``,
        its trained model (``model_dir``, when kept); then close it."""
        from mlflow.entities import Metric, RunTag

        tags = {layout.FROZEN_UNITS: ",".join(result.plan.frozen) or "-", layout.PREFIX_CACHE: result.prefix_cache,
                layout.COMPUTE: result.compute, layout.PEAK_MEMORY_OF: result.peak_memory_of or "-",
                **({layout.AMOUNTS_TO: result.plan.amounts_to} if result.plan.amounts_to else {}),
                **({layout.HEAD_INIT: result.head_init} if result.head_init else {}), **(tags or {})}
        out = result.outcome
        final = {
            **{layout.best_val(k): v for k, v in out.best_val.items()},
            **{f"test_{k}": v for k, v in out.test.items()},
            "best_epoch": out.best_epoch,
            "trainable_params": result.trainable_params,
            "total_params": result.total_params,
            "wall_time_s": result.wall_seconds,
            **({"epoch_time_s": sum(seconds) / len(seconds)}  # train + validation, per epoch
               if (seconds := [h["epoch_seconds"] for h in out.history if "epoch_seconds" in h]) else {}),
            **({"peak_memory_mb": result.peak_memory_mb} if result.peak_memory_mb is not None else {}),
            **(metrics or {}),
        }
        now = int(time.time() * 1000)
        self.client.log_batch(
            run_id,
            metrics=[Metric(k, v, now, 0) for k, v in _finite(final).items()],
            tags=[RunTag(k, v) for k, v in tags.items()],
        )
        self._log_params(run_id, {"weights_source": result.weights_source, "weights_sha256": result.weights_sha256 or "-",
                                  "frozen_unit_names": ", ".join(result.plan.frozen) or "-"})
        self.client.log_dict(run_id, result.plan.as_dict() | {"units": result.units}, layout.FREEZE_PLAN)
        self.client.log_dict(run_id, result.config.as_flat_dict(), layout.TRIAL_CONFIG)
        if result.events:
            self.client.log_dict(run_id, result.events, layout.UNFREEZE_EVENTS)
        self.log_outputs(run_id, outputs)
        if model_dir is not None:
            self.client.log_artifacts(run_id, str(model_dir), layout.MODEL_FOLDER)
            self.client.set_tag(run_id, layout.MODEL, "kept")
        self.client.set_tag(run_id, layout.STATE, "complete")  # last: a run says complete only once all of it is written
        self.client.set_terminated(run_id, "FINISHED")

    def log_outputs(self, run_id: str, outputs, folder: str | None = None) -> None:
        """Log analysis outputs (figures, JSON data, arrays) and a manifest saying what each figure is. Each
        figure is closed once logged, or when logging fails; ``outputs`` may be made as they are consumed (a
        generator): one that stops early is closed, so that it closes the figures it still holds."""
        manifest = []
        items = iter(outputs)
        try:
            for item in items:
                name = f"{folder}/{item.name}" if folder else item.name
                try:
                    if item.figure is not None:
                        self.client.log_figure(run_id, item.figure, name)
                        manifest.append({"name": name, "title": item.title, "section": item.section, "in_report": item.in_report})
                    if item.data is not None:
                        self.client.log_text(run_id, json.dumps(item.data, indent=1, default=str), name)
                    if item.arrays is not None:
                        log_arrays(self.client, run_id, item.arrays, name)
                finally:
                    if item.figure is not None:
                        pyplot().close(item.figure)
        finally:
            if hasattr(items, "close"):
                items.close()
        if manifest:
            manifest_name = f"{folder}/{layout.OUTPUTS_MANIFEST}" if folder else layout.OUTPUTS_MANIFEST
            self.client.log_dict(run_id, manifest, manifest_name)

    def figures_manifest(self, run_id: str, folder: str | None = None) -> list[dict] | None:
        """The manifest of a run's logged figures; None for runs recorded before manifests existed."""
        name = f"{folder}/{layout.OUTPUTS_MANIFEST}" if folder else layout.OUTPUTS_MANIFEST
        if name not in {a.path for a in self.client.list_artifacts(run_id, folder)}:
            return None
        with tempfile.TemporaryDirectory() as tmp:
            with open(self.client.download_artifacts(run_id, name, tmp)) as f:
                return json.load(f)

    def trial_config(self, run_id: str) -> dict[str, Any]:
        with tempfile.TemporaryDirectory() as tmp:
            path = self.client.download_artifacts(run_id, layout.TRIAL_CONFIG, tmp)
            with open(path) as f:
                return json.load(f)

    def confirm_runs(self, experiment_id: str, run_id: str) -> dict[int, Any]:
        """The finished confirmation runs of trial run ``run_id``, by seed."""
        runs = self.client.search_runs([experiment_id], layout.where(layout.CONFIRM, finished=True, confirm_of=run_id))
        return {int(r.data.params["seed"]): r for r in runs}

    def store_leaderboard(self, dataset: str, csv_text: str, markdown: str, note: str) -> None:
        """Keep the dataset's leaderboard as artifacts of a 'leaderboard' run in its experiment."""
        exp_id = self.experiment_id(dataset)
        found = self.client.search_runs([exp_id], layout.where(layout.LEADERBOARD), order_by=["attributes.start_time ASC"],
                                        max_results=1)
        run_id = found[0].info.run_id if found else self.client.create_run(
            exp_id, run_name=f"leaderboard: {dataset}", tags={layout.ROLE: layout.LEADERBOARD, layout.DATASET: dataset}).info.run_id
        self.client.log_text(run_id, csv_text, layout.LEADERBOARD_CSV)
        self.client.log_text(run_id, markdown, layout.LEADERBOARD_MD)
        self.client.set_tag(run_id, layout.NOTE, note)
        self.client.set_terminated(run_id, "FINISHED")

    def end_trial(self, run_id: str, state: str, reason: str = "", only_if_running: bool = False) -> None:
        """Close a trial that did not finish: 'pruned' or 'interrupted' (KILLED), 'failed' (FAILED)."""
        if only_if_running and self.client.get_run(run_id).info.status != "RUNNING":
            return
        self.client.set_tag(run_id, layout.STATE, state)
        if reason:
            self.client.set_tag(run_id, layout.FAIL_REASON, reason[:5000])
        self.client.set_terminated(run_id, "FAILED" if state == "failed" else "KILLED")

    def finish_study(self, run_id: str, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in _finite(metrics).items()])
        self.client.set_terminated(run_id, "FINISHED")

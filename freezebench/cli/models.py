"""`freezebench export` (the recommended trial's trained model, as a folder) and `freezebench predict`."""

from __future__ import annotations

import shlex

import click

from ..errors import UserError
from .console import console, plain, print_json, styled
from .options import open_results, store_options


def _study_run(tracker, experiment_id: str, dataset: str, suite: str | None, study: str | None):
    from ..results import layout

    runs = tracker.client.search_runs([experiment_id], layout.where(layout.STUDY, suite=suite, study=study), max_results=1000)
    names = sorted({r.data.tags.get(layout.STUDY_NAME, "") for r in runs})
    if not runs:
        raise UserError(f"No study {study!r} of dataset {dataset!r}" if study else
                        f"No study of dataset {dataset!r}" + (f" in suite {suite!r}" if suite else "") + ".")
    if len(names) > 1:
        raise UserError(f"Dataset {dataset!r} has {len(names)} studies: {', '.join(names)}. Choose one with --study.")
    return runs[0]


def _experiment(tracker, dataset: str | None, suite: str | None, where: str):
    """The MLflow experiment of ``dataset``; without one, the store's only dataset with a study (of ``suite``)."""
    from ..results.leaderboard import experiments_with_results

    if dataset is not None:
        experiment = tracker.client.get_experiment_by_name(dataset)
        if experiment is None:
            raise UserError(f"No results for dataset {dataset!r} in {where}.")
        return experiment
    found = [name for name, _, _ in experiments_with_results(tracker, suite)]
    if len(found) != 1:
        raise UserError(f"No study in {where}" + (f" of suite {suite!r}" if suite else "") + "." if not found else
                        f"The store holds studies of {len(found)} datasets: {', '.join(found)}. Choose one with --dataset.")
    return tracker.client.get_experiment_by_name(found[0])


def _card(rec, manifest: dict) -> str:
    """MODEL.md: what the model is, how it was chosen, how well it does (with intervals), how to use it."""
    lines = [f"# {manifest['backbone']} for {manifest.get('dataset', '?')}: {', '.join(manifest['classes'])}", ""]
    lines += [line.strip() for line in rec.lines()] if rec is not None else []
    spec = manifest["input"]
    if "members" in manifest:
        source = (f"An ensemble of {len(manifest['members'])} models ({', '.join(manifest['members'])}): one configuration "
                  f"trained with different seeds, their class probabilities averaged. Source runs: {', '.join(manifest['run_ids'])} "
                  f"(study {manifest.get('study', '?')}); pretrained from {manifest['pretrained_from']}.")
    else:
        source = (f"Source run: {manifest['run_id']} (study {manifest.get('study', '?')}, trial {manifest.get('optuna_trial', '?')}); "
                  f"pretrained from {manifest['pretrained_from']}.")
    lines += ["", f"Input: any image, resized to {spec['image_size']} x {spec['image_size']} ({spec['resize_mode']}), "
                  "grayscale repeated to 3 channels, normalised with the backbone's mean and std.", source, "",
              "Use it:", "", "    freezebench predict --model THIS_FOLDER image.png more_images/", "",
              "or, in Python:", "", "    from freezebench.engine.saved import load_model",
              "    probs = load_model('THIS_FOLDER').predict([uint8_image])", ""]
    return "\n".join(lines)


def _fetch(tracker, run_ids: list[str], staging, rec):
    """The model folder of one run, or an ensemble folder of several (``seed-N/`` each), fetched into ``staging``."""
    import shutil

    from mlflow.exceptions import MlflowException

    from ..engine.saved import save_ensemble
    from ..errors import StoreFault
    from ..results import layout

    listed = {run_id: tracker.client.list_artifacts(run_id, layout.MODEL_FOLDER) for run_id in run_ids}
    for run_id, files in listed.items():
        if not files:
            run = tracker.client.get_run(run_id)
            raise UserError(f"The model files of run {run_id} ({run.info.run_name}) are not in its artifact store "
                            f"{run.info.artifact_uri}/{layout.MODEL_FOLDER}: they were deleted, or mlartifacts/ was "
                            "moved apart from mlflow.db. Put them back, or run the suite again to retrain them.")
    needed, free = sum(f.file_size or 0 for files in listed.values() for f in files), shutil.disk_usage(staging).free
    if needed > free:
        raise StoreFault(f"The model needs {needed / 1e6:.1f} MB and {staging.parent} has {free / 1e6:.1f} MB free: "
                         "free some space, or pass another --out.")
    for i, run_id in enumerate(run_ids):
        try:
            tracker.client.download_artifacts(run_id, layout.MODEL_FOLDER, str(staging / f"fetch-{i}"))
        except MlflowException as exc:  # MLflow keeps only its own message: the disk filled meanwhile, or a read failed
            raise StoreFault(f"Could not copy the model files of run {run_id} into {staging.parent} ({exc.message}; "
                             f"{shutil.disk_usage(staging).free / 1e6:.1f} MB free there). Nothing was written; fix the "
                             "cause, then run the same command again.") from None
    if len(run_ids) == 1:
        return staging / "fetch-0" / layout.MODEL_FOLDER
    folder, names = staging / "ensemble", []
    folder.mkdir()
    for i, run_id in enumerate(run_ids):
        names.append(f"seed-{tracker.client.get_run(run_id).data.params.get('seed', i)}")
        (staging / f"fetch-{i}" / layout.MODEL_FOLDER).rename(folder / names[-1])
    return save_ensemble(folder, names, {"dataset": rec.dataset, "study": rec.study, "run_ids": run_ids,
                                         "configuration_run_id": rec.best["run_id"]})


@click.command("export")
@click.option("--dataset", help="Dataset name (the MLflow experiment); needed when the store holds several.")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="New folder for the model.")
@click.option("--suite", help="Only studies of this suite.")
@click.option("--study", help="The study, when the dataset has several (one per backbone).")
@click.option("--run-id", help="A trial run that kept its model, instead of the recommended one.")
@click.option("--single", is_flag=True, help="One model, even when the recommended configuration kept one per seed.")
@click.option("--register", "register", metavar="NAME", help="Also register it in the MLflow Model Registry as NAME.")
@store_options
def export_cmd(dataset, out, suite, study, run_id, single, register, results_dir, storage, tracking_uri):
    """Export the recommended configuration's trained model of DATASET (the store's only dataset when not given) to a folder: safetensors weights,
    a manifest, and a model card with its test metrics and their 95% intervals. When the configuration was
    confirmed with its seeds' models kept (confirm.ensemble, the default), the folder holds them all as one
    ensemble (their probabilities averaged); --single exports one of them."""
    import errno
    import os
    import shutil
    from pathlib import Path

    from ..imagefiles import sweep_orphans
    from ..results import layout
    from ..results.recommend import recommend
    from ..writable import check_writable

    target = Path(out).resolve()
    if target.exists() and any(target.iterdir()):
        raise UserError(f"{target} exists and is not empty: name a new folder with --out.")
    check_writable(target, f"--out {out}", "Name a folder you can write to.")
    stores, tracker = open_results(results_dir, storage, tracking_uri)
    rec, parent, members = None, None, []
    if run_id is None:
        experiment = _experiment(tracker, dataset, suite, stores.tracking_uri)
        dataset = experiment.name
        parent = _study_run(tracker, experiment.experiment_id, dataset, suite, study)
        name = parent.data.tags[layout.STUDY_NAME]
        rec = recommend(tracker, experiment.experiment_id, parent, layout.objective_metric(parent.data.tags))
        if rec is None:
            raise UserError(f"Study {name!r} has no finished trial yet.")
        run_id, members = rec.model_run_id, ([] if single else rec.ensemble_run_ids)
        if run_id is None:
            raise UserError(f"The recommended configuration of study {name!r} kept no trained model (its runs predate "
                            "kept models, or their recording failed): run the suite again to confirm it, or name a run "
                            "with --run-id.")
    from mlflow.exceptions import MlflowException

    try:
        run = tracker.client.get_run(run_id)
    except MlflowException:
        raise UserError(f"No run {run_id!r} in {stores.tracking_uri}.") from None
    if run.data.tags.get(layout.MODEL) != "kept":
        raise UserError(f"Run {run_id} ({run.info.run_name}) did not keep its trained model: each study keeps the models "
                        "of the trials that were its best when they finished. Export the recommended one (no --run-id).")
    target.parent.mkdir(parents=True, exist_ok=True)
    sweep_orphans(target)  # the staging folders of exports killed earlier
    staging = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    shutil.rmtree(staging, ignore_errors=True)  # left, young, by a killed process that had this pid
    staging.mkdir()
    try:  # fetched and written beside the target, then renamed into place: never half a model folder
        folder = _fetch(tracker, members or [run_id], staging, rec)
        from ..engine.saved import load_model

        saved = load_model(folder)  # the weights' hashes and the manifests are checked; it must load
        (folder / "MODEL.md").write_text(_card(rec, saved.manifest), encoding="utf-8")
        try:
            if target.exists():
                target.rmdir()
            os.replace(folder, target)
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            raise UserError(f"{target} was filled by another process during the export: name a new folder with "
                            "--out.") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    what = (f"{run.info.run_name} and its other seeds ({len(members)} models, one ensemble)" if members
            else run.info.run_name)
    console.print(styled("Exported ", (what, "bold"), f" to {target}: {', '.join(sorted(p.name for p in target.iterdir()))}"),
                  highlight=False, soft_wrap=True)
    if register:
        if members:  # an ensemble belongs to no one trial run: it is logged on the study's run and registered from there
            tracker.client.log_artifacts(parent.info.run_id, str(target), layout.ENSEMBLE_FOLDER)
            version = _register(tracker, register, parent, layout.ENSEMBLE_FOLDER, run)
        else:
            version = _register(tracker, register, run)
        console.print(styled("Registered as ", (f"{register} version {version.version}", "bold"),
                             f" in the MLflow Model Registry (source {version.source})"), highlight=False, soft_wrap=True)
    console.print(styled("Use it: ", (f"freezebench predict --model {shlex.quote(str(target))} IMAGES...", "bold")), highlight=False, soft_wrap=True)


def _register(tracker, name: str, run, folder: str | None = None, described=None):
    """A new version of registered model ``name`` pointing at ``run``'s model folder (``folder``: another one),
    tagged with what ``described`` (default: ``run``) trained."""
    from mlflow.exceptions import MlflowException

    from ..results import layout

    client = tracker.client
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="Models exported by freezebench (safetensors + freezebench-model.json).")
    about = (described or run).data.tags
    tags = {k: about[k] for k in (layout.DATASET, layout.STRATEGY, layout.STRATEGY_PARAMS, layout.BACKBONE) if k in about}
    return client.create_model_version(name, f"{run.info.artifact_uri}/{folder or layout.MODEL_FOLDER}", run_id=run.info.run_id,
                                       tags=tags)


PREDICT_BATCH = 64


def _image_files(item):
    """The image files an argument of ``predict`` names: a file, a folder (searched recursively), or a CSV
    with a ``path`` column (relative to the CSV's folder). Every file is checked to exist first."""
    import csv

    from ..imageio import IMAGE_SUFFIXES

    if item.is_dir():
        found = sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise UserError(f"{item} holds no images ({', '.join(IMAGE_SUFFIXES)}).")
        return found
    if not item.is_file():
        raise UserError(f"{item} does not exist.")
    if item.suffix.lower() != ".csv":
        return [item]
    try:
        with open(item, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            rows, header = list(reader), reader.fieldnames or []
    except UnicodeDecodeError:
        raise UserError(f"{item}: not UTF-8 text. Save it as UTF-8 (in a spreadsheet: \"CSV UTF-8\").") from None
    if "path" not in header:
        raise UserError(f"{item}: needs a header with a path column (one image per row); its first line has {header or 'nothing'}.")
    listed = [item.parent / (r["path"] or "").strip() for r in rows]
    absent = [str(p) for p in listed if not p.is_file()]
    if absent:
        raise UserError(f"{item}: {len(absent)} rows name files that do not exist, e.g. {absent[:3]}. "
                        "Paths are read relative to the CSV's folder.")
    if not listed:
        raise UserError(f"{item}: has a header but no rows: list one image per row.")
    return listed


@click.command("predict")
@click.option("--model", "model_dir", required=True, type=click.Path(file_okay=False), help="A folder made by freezebench export.")
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--out", type=click.Path(dir_okay=False), help="Also write the predictions to this CSV file.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def predict_cmd(model_dir, images, out, as_json):
    """Class probabilities for IMAGES (image files, folders of images, or CSV files with a path column)
    from an exported model."""
    import csv
    from pathlib import Path

    import numpy as np
    from rich import box
    from rich.table import Table

    from ..engine.saved import load_model
    from ..imagefiles import read_images
    from ..imageio import resize_one
    from ..writable import written_whole

    if any(not item.strip() for item in images):  # Path("") would be the current folder
        raise UserError("An empty IMAGES argument: name image files, folders or CSV files.")
    if out:
        from ..writable import check_writable

        check_writable(Path(out).parent, f"--out {out}", "Name a file in a folder you can write to.")
    files = [f for item in map(Path, images) for f in _image_files(item)]
    saved = load_model(model_dir)
    spec, probs, batch = saved.manifest["input"], [], []
    for image in read_images(files):  # decoded a few at a time: memory grows with neither the files nor their pixels
        batch.append(resize_one(image, spec["image_size"], spec["resize_mode"]).transpose(1, 2, 0))  # what the model reads
        if len(batch) == PREDICT_BATCH:
            probs.append(saved.predict(batch))
            batch = []
    probs = np.concatenate(probs + [saved.predict(batch)] if batch else probs)
    classes = saved.classes
    rows = [{"file": str(f), "predicted": classes[int(p.argmax())], **{f"p_{c}": float(v) for c, v in zip(classes, p)}}
            for f, p in zip(files, probs)]
    if out:
        with written_whole(Path(out)) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    if as_json:
        print_json(rows)
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for column in ("file", "predicted", *(f"p({c})" for c in classes)):
        table.add_column(plain(column), justify="left" if column in ("file", "predicted") else "right")
    for r in rows:
        table.add_row(plain(r["file"]), plain(r["predicted"]), *(plain(f"{r[f'p_{c}']:.3f}") for c in classes))
    console.print(table)

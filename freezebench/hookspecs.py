"""The hooks a freezebench plugin can implement.

Two kinds:

- **Registration** (``register_*``): called once per process, the first time a component of that
  kind is looked up. Each receives a ``register`` callback; call it once per component. Names are
  checked (a duplicate fails, naming both plugins).
- **Lifecycle**: the host calls these at named points of a trial's and a study's flow, in every
  plugin that implements them (pluggy calls the most recently registered first). They observe, and
  may act through the handles they get; none can stop the flow except by raising, which fails the
  trial (recorded with its reason) as any error in training would.

Mark implementations with ``freezebench.hookimpl`` (also ``freezebench.hookspecs.hookimpl``).
An implementation may take any subset of a hook's arguments, by name.
``FREEZEBENCH_TRACE_PLUGINS=1`` logs every hook call.
"""

import pluggy

hookspec = pluggy.HookspecMarker("freezebench")
hookimpl = pluggy.HookimplMarker("freezebench")


# -- registration ------------------------------------------------------------------------------


@hookspec
def register_datasets(register):
    """Register datasets: ``register(DatasetSpec(...))`` (``freezebench.dataset``)."""


@hookspec
def register_backbones(register):
    """Register backbones: ``register(BackboneSpec(...))`` (``freezebench.backbone``)."""


@hookspec
def register_strategies(register):
    """Register freeze strategies: ``register(strategy)`` (``freezebench.strategy.Strategy``)."""


@hookspec
def register_analyses(register):
    """Register analyses: ``register(analysis)`` (``freezebench.analysis``): objects with ``name``,
    ``summary``, ``scope`` ("trial" or "study") and ``run(inputs) -> list[Output]``."""


# -- the lifecycle of a trial and a study ---------------------------------------------------------


@hookspec
def trial_started(trial):
    """Called once per trial, after the backbone is built, the freeze plan applied and the optimizer
    made, before the first epoch.

    :param trial: the running trial (``freezebench.engine.trial.TrialState``): ``config``
        (``TrialConfig``), ``backbone`` (``Backbone``: ``model``, ``units``, ``head``), ``plan``
        (``FreezePlan``), ``model`` (the module that trains: the whole backbone, or the suffix
        after a cached frozen prefix), ``optimizer``, ``dataset`` (``ImageDataset``) and
        ``history`` (per-epoch records so far).

    The return value is ignored.
    """


@hookspec
def epoch_ended(trial, epoch, record):
    """Called after each training epoch, once its validation metrics are measured, before the
    pruner sees them.

    :param trial: the running trial (as in ``trial_started``); ``trial.optimizer`` and
        ``trial.model`` may be changed here (freeze, unfreeze, rescale LR) for the next epoch.
    :param epoch: the 1-based epoch that ended.
    :param record: this epoch's metrics: ``train_loss`` and ``val_<metric>`` for every metric.

    The return value is ignored.
    """


@hookspec
def trial_trained(trial):
    """Called once per trial after training, when the model holds the selected epoch's weights and
    its test-set outputs are collected: the place for inspection (feature maps, probes).

    :param trial: the trained trial: as in ``trial_started``, plus ``outputs`` (``TrialOutputs``,
        which an implementation may enrich for trial analyses), ``test_images`` (uint8, as the
        model sees them before normalisation), ``test_labels``, ``normalize`` (uint8 batch ->
        model input), ``compute`` (device, AMP and memory format) and ``inspect``: whether this
        trial's analyses run (the suite's ``analyses`` setting: by default only a trial that is the
        best so far of its case). Skip costly inspection when ``inspect`` is false.

    Return a list of ``freezebench.analysis.Output`` (figures, data, arrays) to store with the
    trial, or None. Every implementation's outputs are kept.
    """


@hookspec
def trial_finished(result, run_id):
    """Called once per trial after its results are recorded in MLflow.

    :param result: the ``TrialResult`` (config, plan, outcome with test metrics, parameter counts,
        wall time, outputs).
    :param run_id: the trial's MLflow run id.

    The return value is ignored.
    """


@hookspec
def study_finished(summary):
    """Called once per study run, after its trials (and confirmation re-runs) are recorded.

    :param summary: the ``StudySummary``: ``study``, ``dataset``, ``backbone``, trial ``counts``
        by state, the best trial's ``best_value``, ``best_params`` and ``best_test`` metrics, and
        the study's MLflow ``parent_run_id``.

    The return value is ignored.
    """

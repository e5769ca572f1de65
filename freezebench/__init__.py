"""freezebench: a plugin-based benchmark harness for freeze strategies in transfer learning.

What plugin authors import (as ``llm`` and ``datasette`` export theirs)::

    from freezebench import hookimpl, FreezePlan, StrategyParam, plan_from_frozen

None of these import torch: registering components stays light (``freezebench list`` does not
load torch); building and training a model does.
"""

from .analysis import Output, StudyRecords
from .backbone import Backbone, BackboneSpec, Unit, WeightsRequest
from .dataset import DatasetSpec, ImageDataset
from .errors import PluginError, UserError
from .hookspecs import hookimpl
from .records import TrialConfig, TrialOutputs, TrialResult
from .strategy import FreezePlan, InvalidParams, Phase, StrategyParam, plan_from_frozen

__version__ = "0.1.0"

__all__ = ["hookimpl", "FreezePlan", "Phase", "StrategyParam", "InvalidParams", "plan_from_frozen", "DatasetSpec",
           "ImageDataset", "BackboneSpec", "Backbone", "Unit", "WeightsRequest", "Output", "StudyRecords",
           "TrialOutputs", "TrialConfig", "TrialResult", "UserError", "PluginError", "__version__"]


"""The training engine: data in, a checkpointed, evaluated, exported model out.

No HTTP, no database: the job system calls :func:`train` (or a :class:`Launcher`) with a
:class:`TrainSpec`, a :class:`~modelyard.engine.dataframes.Table` and a work folder, and gets a
:class:`TrainResult` (ONNX file with preprocessing inside, safetensors weights, a JSON
architecture, metrics, curves, lineage, signature).
"""

from modelyard.engine.trainer.errors import TrainingCancelled, TrainingFailed
from modelyard.engine.trainer.launcher import DDPLauncher, Launcher, LocalLauncher, launcher_for
from modelyard.engine.trainer.loop import train
from modelyard.engine.trainer.recipes import build_module, load_module
from modelyard.engine.trainer.results import ProgressEvent, TrainResult
from modelyard.engine.trainer.spec import RECIPES, TrainPlan, TrainSpec

__all__ = [
    "RECIPES",
    "TrainSpec",
    "TrainPlan",
    "train",
    "Launcher",
    "LocalLauncher",
    "DDPLauncher",
    "launcher_for",
    "ProgressEvent",
    "TrainResult",
    "TrainingFailed",
    "TrainingCancelled",
    "build_module",
    "load_module",
]

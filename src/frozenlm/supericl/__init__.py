"""SuperICL: a small fine-tuned plug-in's predictions and confidences in the large model's
context (Xu et al. 2023), on the local frozen backbone or any OpenAI-compatible endpoint."""

from frozenlm.supericl.backends import LocalBackend, OpenAIBackend, OpenAIConfig
from frozenlm.supericl.job import get_plugin, supericl_job
from frozenlm.supericl.plugin_model import PluginClassifier, PluginTrainConfig
from frozenlm.supericl.run import SuperICLConfig, SuperICLResult, pick_demos, run_supericl

__all__ = [
    "LocalBackend",
    "OpenAIBackend",
    "OpenAIConfig",
    "PluginClassifier",
    "PluginTrainConfig",
    "SuperICLConfig",
    "SuperICLResult",
    "get_plugin",
    "pick_demos",
    "run_supericl",
    "supericl_job",
]

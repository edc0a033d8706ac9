"""s5video models: S4/S4D layers, ViS4mer, S5 (Selective S4), LSMCL, LST and VideoMamba baselines,
frozen frame encoders. Models know nothing of data loading, DeepSpeed or Slurm."""
from s5video.models.registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]

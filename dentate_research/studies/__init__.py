"""Studies that reproduce the paper's tables (T1-T6) and the failure-mode study (T7) from real runs; driven by
``python -m dentate_research reproduce``. The orchestration is plain Python: it receives a function that turns a
list of train-config overrides into a config, so Hydra stays at the command-line edge."""

from .runner import STUDIES, StudySettings, run_studies

__all__ = ["STUDIES", "StudySettings", "run_studies"]

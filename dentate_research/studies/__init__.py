"""Studies that reproduce the paper's tables (T1-T6) and the failure-mode study (T7) from real runs; driven by
``python -m dentate_research reproduce``. The orchestration is plain Python: it receives a function that turns a
list of train-config overrides into a config, so Hydra stays at the command-line edge.

One module per table, registered by study name in :data:`STUDY_TABLES` (:func:`look_up_study`); :class:`StudyRunner`
holds what they share (data, splits, training runs, per-case inference and evaluation)."""

from .registry import STUDIES, STUDY_TABLES, look_up_study
from .runner import StudyRunner, run_studies
from .settings import StudySettings

__all__ = ["STUDIES", "STUDY_TABLES", "StudyRunner", "StudySettings", "look_up_study", "run_studies"]

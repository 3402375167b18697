"""Studies that reproduce the paper's tables (T1-T6) and the failure-mode study (T7) from real runs; driven by
``python -m dentate_research reproduce``. The orchestration is plain Python: it receives a function that turns a
list of train-config overrides into a config, so Hydra stays at the command-line edge.

One module per table, each registering its :class:`Study` (name, table id, title, table and training runs) in
:mod:`.registry` (:func:`registered_studies`, :func:`look_up_study`); :class:`StudyRunner` holds what they share
(data, splits, training runs, per-case inference and evaluation)."""

from .registry import Study, look_up_study, register, registered_studies, study_names, unregister
from .runner import StudyRunner, run_studies
from .settings import StudySettings

__all__ = ["Study", "StudyRunner", "StudySettings", "look_up_study", "register", "registered_studies", "run_studies",
           "study_names", "unregister"]

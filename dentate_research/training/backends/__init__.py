"""Training backends: one per framework of the architecture registry (``ArchSpec.framework``), one protocol, one
dispatch.

:func:`get_backend` (``"monai"`` | ``"nnunet"``) returns a :class:`~.base.TrainingBackend`; everything that differs
between frameworks - config checks, training, counting parameters, fine-tuning support -
is a method or attribute of it, so the rest of the package never branches on the framework name:

- ``monai`` (:mod:`.monai_backend`): our torch loop (:mod:`dentate_research.training.monai_loop`) and sliding-window
  inferer;
- ``nnunet`` (:mod:`.nnunet_backend`): nnU-Net v2's own planning, training and predictor
  (:mod:`dentate_research.training.nnunet_runner`).

Backend modules are imported on first use, so this package stays cheap to import.
"""

from __future__ import annotations

from importlib import import_module

from .base import TrainingBackend, TrainingJob

__all__ = ["FRAMEWORKS", "TrainingBackend", "TrainingJob", "get_backend"]

# framework name -> "module:class" of its backend (modules inside this package)
_BACKENDS = {"monai": "monai_backend:MonaiBackend", "nnunet": "nnunet_backend:NnUNetBackend"}
FRAMEWORKS = tuple(_BACKENDS)


def get_backend(framework: str) -> TrainingBackend:
    """The backend of ``framework``; ValueError naming the choices for an unknown name."""
    if framework not in _BACKENDS:
        raise ValueError(f"unknown framework '{framework}'; allowed: {', '.join(FRAMEWORKS)}")
    module_name, class_name = _BACKENDS[framework].split(":")
    module = import_module(f".{module_name}", __name__)
    return getattr(module, class_name)()

"""What a trained stage needs at run time, shared by training (validation) and inference.

- :mod:`.stage_model`: :class:`~.stage_model.NetworkStageModel`, :func:`~.stage_model.load_stage_model` and
  :func:`~.stage_model.load_stage` (one subclass per framework: :mod:`.monai_model`, :mod:`.nnunet_model`), and
  :func:`~.stage_model.model_files` (what loading a stage reads);
- :mod:`.inferer`: sliding-window inference and laterality-safe test-time augmentation;
- :mod:`.crops`: localization and the segmentation crop (one implementation for training, validation, inference);
- :mod:`.normalization`: per-case intensity normalization;
- :mod:`.device`: the torch device of a run.

This package imports nothing from :mod:`dentate_research.training` or :mod:`dentate_research.inference`.
"""

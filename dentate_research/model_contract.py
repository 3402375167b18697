"""The runtime model contract: :class:`ModelCard` (``model.json``) and the :class:`StageModel` protocol.

One owner for what a trained stage is, below models, training and inference in the layering
(data -> models -> training -> inference -> ...): training writes cards and implements the protocol
(:mod:`dentate_research.runtime.stage_model`: ``NetworkStageModel``, ``load_stage``), inference only relies on
it, so inference can be read and tested without knowing how a model was trained (MONAI network, nnU-Net, ...).
Needs numpy and nibabel only (no torch), so importing inference stays cheap.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .data.atomic import write_text_atomic
from .data.io import DataError, Volume
from .data.labels import CEREBELLUM_TARGET, LATERAL, MERGED, LabelScheme, network_label_scheme
from .schema import CropSettings

MODEL_CARD_VERSION = 1
STAGES = ("localization", "segmentation")
# label schemes a card may name (``ModelCard.label_scheme``), by name
CARD_LABEL_SCHEMES = {scheme.name: scheme for scheme in (LATERAL, MERGED, CEREBELLUM_TARGET)}


@dataclass
class ModelCard:
    """Everything needed to apply a trained stage model (stored as ``model.json``).

    Attributes:
        stage: ``localization`` | ``segmentation``.
        arch: registry name (``unet``, ``nnunet``, ...); ``framework``: ``monai`` | ``nnunet``.
        arch_kwargs: network keyword arguments (MONAI) or the nnU-Net configuration summary.
        classes: class names by label value (``["background", "left_dn", "right_dn"]``).
        target_spacing_mm: voxel size the network works at (mm, canonical RAS axes x, y, z).
        patch_size: training patch = sliding window (voxels).
        normalization: ``{"scheme": ..., "clip_percentiles": [...]}``
            (:func:`dentate_research.runtime.normalization.normalize_intensity`).
        inferer: sliding-window settings (overlap, Gaussian blending, TTA policy).
        postprocess: ``{"largest_component_per_class": bool}``.
        localization_target: what the localizer predicts (``cerebellum``), None for segmentation.
        label_scheme: what the classes mean (:mod:`dentate_research.data.labels`): ``lateral`` (1 left, 2 right DN),
            ``merged`` (one DN class, sides from world x) or ``cerebellum`` (localizer); cards written before this
            field get it from ``stage`` and ``classes`` (:func:`~dentate_research.data.labels.network_label_scheme`).
        crop: how segmentation crops are made: ``{"source": "cerebellum"|"dn", "margin_mm": ..,
            "jitter_mm": ..}``; for a localizer, the margin its bounding-box recall was measured with.
        label_rater: which manifest label trained the model (``true`` for phantoms).
        checkpoint: weights file relative to the run directory (MONAI) or the nnU-Net checkpoint.
        nnunet: nnU-Net bookkeeping (plans/dataset.json paths, configuration, mirror axes) or None.
        metrics: final validation metrics measured with this card's inference settings.
        train_cases / val_cases: case IDs used (subject-level split).
    """

    stage: str
    arch: str
    framework: str
    arch_kwargs: dict[str, Any]
    classes: list[str]
    target_spacing_mm: list[float]
    patch_size: list[int]
    normalization: dict[str, Any]
    inferer: dict[str, Any]
    postprocess: dict[str, Any] = field(default_factory=lambda: {"largest_component_per_class": True})
    localization_target: str | None = None
    label_scheme: str = ""  # "" -> derived from stage and classes in __post_init__
    crop: dict[str, Any] = field(default_factory=dict)
    label_rater: str = "true"
    in_channels: int = 1
    checkpoint: str = "checkpoints/best.pt"
    nnunet: dict[str, Any] | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    train_cases: list[str] = field(default_factory=list)
    val_cases: list[str] = field(default_factory=list)
    seed: int = 0
    created_utc: str = ""
    schema_version: int = MODEL_CARD_VERSION

    def __post_init__(self) -> None:
        if not self.label_scheme:
            self.label_scheme = network_label_scheme(self.stage, self.classes).name
        if self.label_scheme not in CARD_LABEL_SCHEMES:
            raise DataError(f"model card: label_scheme '{self.label_scheme}' unknown; allowed: "
                            f"{list(CARD_LABEL_SCHEMES)}")

    @property
    def crop_margin_mm(self) -> float:
        return float(self.crop.get("margin_mm", CropSettings.margin_mm))  # cards without it: the schema's

    def to_json(self, path: Path | str) -> Path:
        path = Path(path)
        write_text_atomic(path, json.dumps(asdict(self), indent=1, default=json_default) + "\n")
        return path

    @classmethod
    def from_json(cls, path: Path | str) -> ModelCard:
        path = Path(path)
        if not path.exists():
            raise DataError(f"{path}: model card not found (is this a run directory written by 'train'?)")
        data = json.loads(path.read_text())
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise DataError(f"{path}: unknown model card field(s) {unknown}")
        return cls(**data)


def json_default(obj: Any) -> Any:
    """``json.dumps(default=...)`` for numpy scalars/arrays, tuples and paths in cards and run records."""
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, (np.ndarray, tuple)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


@runtime_checkable
class StageModel(Protocol):
    """A trained stage: ``predict`` returns integer labels on the input volume's own grid.

    Localization models return a binary mask (1 = target, e.g. cerebellum); segmentation models return
    0 / 1 = left DN / 2 = right DN in world RAS. Resampling, normalization, sliding-window inference and
    test-time augmentation happen inside ``predict``. ``card`` is the :class:`ModelCard` (or a dict with its fields).
    Optional: ``predict_probabilities(volume) -> (probs (C, X, Y, Z), grid Volume)`` on the network grid; when
    present the pipeline localizes on the coarse grid (see :func:`dentate_research.runtime.crops.localize`).
    Optional: ``predict_with_confidence(volume) -> (labels, max_probability)``, both on the input grid, the second
    the per-voxel maximum over classes of the softmax probabilities; when a segmenter has it the pipeline checks
    its confidence inside the predicted DN (:mod:`dentate_research.inference.qc`), otherwise confidence is recorded
    as None and not checked. If the method also accepts ``merge_foreground=True`` (the training package's
    ``NetworkStageModel`` does) the pipeline asks for DN-vs-background confidence (left and right merged), because
    sides are re-assigned from world x anyway.
    """

    card: Any

    def predict(self, volume: Volume) -> np.ndarray: ...


def card_value(card: Any, name: str, default: Any = None) -> Any:
    """Read a ModelCard field whether the card is a dataclass-like object or a plain dict."""
    if isinstance(card, dict):
        return card.get(name, default)
    return getattr(card, name, default)


def card_label_scheme(card: Any) -> LabelScheme:
    """The label scheme of a ModelCard, a card-like object or a plain dict: its ``label_scheme`` field, else derived
    from ``stage`` (default segmentation) and ``classes`` (default the lateral classes)."""
    name = card_value(card, "label_scheme")
    if name:
        if name not in CARD_LABEL_SCHEMES:
            raise DataError(f"model card: label_scheme '{name}' unknown; allowed: {list(CARD_LABEL_SCHEMES)}")
        return CARD_LABEL_SCHEMES[name]
    classes = card_value(card, "classes") or LATERAL.class_names
    return network_label_scheme(str(card_value(card, "stage") or "segmentation"), classes)


def card_to_dict(card: Any) -> dict[str, Any]:
    """JSON-friendly view of a ModelCard (for the metadata report)."""
    if isinstance(card, dict):
        return dict(card)
    for method in ("to_dict", "as_dict"):
        if hasattr(card, method):
            return dict(getattr(card, method)())
    if is_dataclass(card) and not isinstance(card, type):
        return asdict(card)
    return {"repr": repr(card)}

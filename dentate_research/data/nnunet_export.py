"""Export a manifest to the nnU-Net v2 raw dataset layout.

``RAW_DIR/DatasetXXX_Name/imagesTr/<case>_0000.nii.gz``, ``labelsTr/<case>.nii.gz``, ``imagesTs/`` (cases not
chosen for training, images only) and ``dataset.json`` (channel "QSM" -> per-case z-score normalization;
labels background 0, left_DN 1, right_DN 2). Images and labels are written in canonical RAS on the same grid;
images stored in ppb are converted to ppm (manifest column ``units``). This module does not import nnunetv2.

The raw-layout writer (:func:`raw_dataset_folder`, :func:`write_raw_case`, :func:`write_dataset_json`) is shared
with the nnU-Net training runner (:mod:`dentate_research.training.nnunet_runner`), which writes prepared stage
samples instead of manifest cases.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..schema import arch_config_kwargs
from .atomic import write_text_atomic
from .io import DataError, load_image, load_label, save_nifti
from .labels import BACKGROUND, LEFT_DN, RIGHT_DN
from .manifest import Case, read_manifest
from .units import array_in_ppm

# dataset.json labels (nnU-Net's names -> the lateral scheme's values of data/labels.py)
NNUNET_LABELS = {"background": BACKGROUND, "left_DN": LEFT_DN, "right_DN": RIGHT_DN}
_CASE_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*$")


def dataset_folder_name(dataset_id: int, name: str) -> str:
    """'Dataset501_Dentate' from (501, 'Dentate'); ids 1-999, names of letters, digits, '-' and '_'."""
    if not 1 <= int(dataset_id) <= 999:
        raise ValueError(f"dataset_id must be in 1..999 (nnU-Net uses three digits), got {dataset_id}")
    if not re.fullmatch(r"[A-Za-z0-9_\-]+", name):
        raise ValueError(f"dataset name '{name}' may only contain letters, digits, '-' and '_'")
    return f"Dataset{int(dataset_id):03d}_{name}"


def raw_dataset_folder(raw_dir: Path | str, dataset_id: int, name: str,
                       subfolders: tuple[str, ...] = ("imagesTr", "labelsTr")) -> Path:
    """``raw_dir/DatasetXXX_Name`` with its ``subfolders`` created; returns the dataset folder."""
    folder = Path(raw_dir) / dataset_folder_name(dataset_id, name)
    for sub in subfolders:
        (folder / sub).mkdir(parents=True, exist_ok=True)
    return folder


def write_raw_case(folder: Path, case_id: str, image: np.ndarray, affine: np.ndarray,
                   label: np.ndarray | None = None, label_affine: np.ndarray | None = None) -> None:
    """Write one case in nnU-Net's raw layout: a training case (``label`` given) as ``imagesTr/<id>_0000.nii.gz``
    + ``labelsTr/<id>.nii.gz`` (on ``label_affine``, default ``affine``), a test case as
    ``imagesTs/<id>_0000.nii.gz``. ``image`` in ppm, ``affine`` RAS mm."""
    target = "imagesTs" if label is None else "imagesTr"
    save_nifti(image, affine, folder / target / f"{case_id}_0000.nii.gz")
    if label is not None:
        save_nifti(label, affine if label_affine is None else label_affine, folder / "labelsTr" / f"{case_id}.nii.gz",
                   is_label=True)


def write_dataset_json(folder: Path, labels: dict[str, int], n_training: int, description: str,
                       **extra: Any) -> Path:
    """``dataset.json`` of a raw dataset: one channel "QSM" (nnU-Net's per-case z-score), ``labels`` (name ->
    value), ``numTraining``, ``.nii.gz`` files, the dataset name from the folder, plus ``extra`` keys."""
    dataset = {"name": folder.name.split("_", 1)[1], "description": description, "channel_names": {"0": "QSM"},
               "labels": dict(labels), "numTraining": int(n_training), "file_ending": ".nii.gz", **extra}
    path = folder / "dataset.json"
    write_text_atomic(path, json.dumps(dataset, indent=2) + "\n")
    return path


def export_nnunet(manifest: Path | str | list[Case], raw_dir: Path | str, dataset_id: int | None = None,
                  name: str | None = None, rater: str = "true", train_case_ids: list[str] | None = None,
                  overwrite: bool = False, progress: bool = True) -> Path:
    """Write an nnU-Net raw dataset and return its folder.

    Args:
        manifest: manifest path (TSV/CSV) or a list of Cases.
        raw_dir: the nnU-Net raw folder (``nnUNet_raw``); the dataset goes into ``DatasetXXX_Name`` inside.
        dataset_id, name: nnU-Net dataset ID (1-999) and name (default: ``dataset_id`` / ``dataset_name`` of
            ``configs/arch/nnunet.yaml``, the dataset ``train arch=nnunet`` writes).
        rater: whose labels to train on ('true' for phantoms, e.g. 'rater1' for real data).
        train_case_ids: cases for imagesTr/labelsTr (default: all); the remaining cases go to imagesTs.
        overwrite: replace an existing dataset folder's files.
    """
    nnunet_defaults = arch_config_kwargs("nnunet")
    dataset_id = int(nnunet_defaults["dataset_id"] if dataset_id is None else dataset_id)
    name = str(nnunet_defaults["dataset_name"] if name is None else name)
    cases = read_manifest(manifest) if isinstance(manifest, (str, Path)) else list(manifest)
    if not cases:
        raise DataError(f"{manifest}: no cases to export")
    by_id = {c.case_id: c for c in cases}
    if train_case_ids is None:
        train_ids = [c.case_id for c in cases]
    else:
        unknown = [i for i in train_case_ids if i not in by_id]
        if unknown:
            raise DataError(f"training case IDs {unknown[:5]} are not in the manifest "
                            f"(known: {list(by_id)[:5]}...)")
        train_ids = list(dict.fromkeys(train_case_ids))
    if not train_ids:
        raise DataError("no training cases selected; nnU-Net needs at least one")
    bad = [i for i in by_id if not _CASE_ID_PATTERN.match(i)]
    if bad:
        raise DataError(f"case IDs {bad[:5]} are not valid nnU-Net identifiers "
                        "(allowed: letters, digits, '_' and '-')")
    no_label = [i for i in train_ids if rater not in by_id[i].labels]
    if no_label:
        raise DataError(f"rater '{rater}' has no label for training case(s) {no_label[:5]}; "
                        f"available raters for {no_label[0]}: {sorted(by_id[no_label[0]].labels)}")
    folder = Path(raw_dir) / dataset_folder_name(dataset_id, name)
    if folder.exists() and any(folder.iterdir()) and not overwrite:
        raise FileExistsError(f"{folder}: exists and is not empty; pass overwrite=True (CLI: --overwrite)")
    folder = raw_dataset_folder(raw_dir, dataset_id, name, ("imagesTr", "labelsTr", "imagesTs"))
    train_set = set(train_ids)
    for case in tqdm(cases, desc="nnU-Net export", disable=not progress):
        image = load_image(case.image)
        label = load_label(case.label(rater), reference=image) if case.case_id in train_set else None
        image_ppm = array_in_ppm(image.array, case.meta.get("units"), f"case {case.case_id}")
        write_raw_case(folder, case.case_id, image_ppm, image.affine,
                       None if label is None else label.array, None if label is None else label.affine)
    write_dataset_json(folder, NNUNET_LABELS, len(train_ids),
                       f"DN segmentation in QSM; labels from rater '{rater}'; exported by dentate_research",
                       rater=rater, sites=sorted({by_id[i].site for i in train_ids}))
    return folder

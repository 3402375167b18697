"""Segment a batch of QSM scans from Python: what ``python -m dentate_research segment`` does, without the CLI.

    from dentate_research.inference.batch import collect_inputs, select_model, segment_batch

    model = select_model()                                   # the default model (or model=..., localizer=...)
    predictor = model.predictor(device="cpu")
    result = segment_batch(predictor, collect_inputs([Path("scans/")]), Path("out/"), resume=True)
    result.counts()                                          # {"ok": .., "flagged": .., "failed": .., ...}

:func:`segment_batch` segments every input into ``out`` (:func:`~.outputs.segment_file`: atomic files, the locked
``volumes.csv``), turns an error of one input into that input's ``failed`` record and goes on, skips complete
cases with ``resume`` (partial ones are redone), rebuilds ``report.html`` after every case, and at the end brings
``volumes.csv`` up to date, writes the BIDS derivatives (``bids_out``) and the final report. A KeyboardInterrupt
(Ctrl-C, or a SIGTERM handler that raises one, as the CLI installs) still brings ``volumes.csv`` and the report up
to date and is then re-raised with the outcomes so far attached (``exc.outcomes``). Progress goes to a tqdm bar
and each finished case to ``on_case``; nothing is printed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.io import NIFTI_SUFFIXES, DataError

log = logging.getLogger(__name__)

OUTCOMES = ("ok", "flagged", "failed", "bad_input", "skipped")


def collect_inputs(paths: Sequence[Path], bids_suffix: str = "Chimap", derivatives: str | None = None) -> list[Path]:
    """Expand folders to their .nii/.nii.gz files (sorted); a BIDS dataset folder (``sub-*`` folders or a
    dataset_description.json) to its ``*_<bids_suffix>`` maps (derivatives/, sourcedata/ and hidden folders
    skipped), or, with ``derivatives``, every folder to the maps of ``derivatives/<derivatives>/`` in it; check
    files exist and are NIfTI by name (DataError naming the path otherwise)."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir() and (derivatives is not None or (path / "dataset_description.json").is_file()
                              or any(path.glob("sub-*/"))):
            from ..data.bids import find_maps

            files.extend(m.path for m in find_maps(path, suffix=bids_suffix, derivatives=derivatives))
        elif path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(NIFTI_SUFFIXES))
            if not found:
                raise DataError(f"{path}: folder contains no .nii or .nii.gz file")
            files.extend(found)
        elif not path.exists():
            raise DataError(f"{path}: file not found")
        elif not path.name.endswith(NIFTI_SUFFIXES):
            raise DataError(f"{path}: unsupported file type; allowed: .nii, .nii.gz (or a folder of them)")
        else:
            files.append(path)
    return files


# ------------------------------------------------------------------------------------------------ the model
@dataclass
class ModelChoice:
    """Which two-step model a batch uses and where it comes from (recorded in every case's metadata)."""

    localizer: Path
    segmenter: Path
    model_dir: Path | None
    source: str  # --model | $DENTATE_RESEARCH_MODEL | user cache | shipped asset | --localizer/--segmenter
    card_name: str
    shadows: Path | None = None  # the shipped model that a model in the user cache hides

    def info(self) -> dict[str, Any]:
        return {"model_dir": None if self.model_dir is None else str(self.model_dir.resolve()), "source": self.source,
                "card_name": self.card_name, "shadows": None if self.shadows is None else str(self.shadows)}

    def start_line(self) -> str:
        where = f"{self.model_dir}" if self.model_dir is not None else "run folders"
        line = f"model: {self.source} {where} (card '{self.card_name}')"
        if self.shadows is not None:
            line += f", shadowing the shipped model {self.shadows} (pass --model to choose)"
        return f"{line}; localizer {self.localizer}, segmenter {self.segmenter}"

    def predictor(self, device: str = "cpu", margin_mm: float | None = None) -> Any:
        """A :class:`~.pipeline.DentatePredictor` of this model that records :meth:`info` in the metadata."""
        from .pipeline import DentatePredictor

        predictor = DentatePredictor(self.localizer, self.segmenter, device=device, margin_mm=margin_mm)
        predictor.model_info = self.info()
        return predictor


def card_name(model_dir: Path | None, localizer: Path, segmenter: Path) -> str:
    """The first heading of MODEL_CARD.md in the model folder, else a summary of the two model.json cards."""
    if model_dir is not None and (model_dir / "MODEL_CARD.md").is_file():
        for line in (model_dir / "MODEL_CARD.md").read_text(errors="replace").splitlines():
            if line.startswith("#"):
                return line.lstrip("#").strip()
    parts = []
    for role, run_dir in (("localizer", localizer), ("segmenter", segmenter)):
        try:
            card = json.loads((run_dir / "model.json").read_text())
            spacing = card.get("target_spacing_mm") or ["?"]
            parts.append(f"{card.get('arch', '?')} {role} {spacing[0]} mm")
        except (OSError, ValueError, AttributeError):
            parts.append(f"{role} (unreadable model.json)")
    return " + ".join(parts)


def select_model(model: Path | str | None = None, localizer: Path | str | None = None,
                 segmenter: Path | str | None = None) -> ModelChoice:
    """The model a batch uses: ``localizer`` + ``segmenter`` run folders, a two-step ``model`` folder, or the
    default model (:func:`~.default_model.default_model_dir`: ``$DENTATE_RESEARCH_MODEL``, the user cache, the
    shipped asset). DataError for a bad combination or folder."""
    from .default_model import MODEL_ENV, default_model_dir, is_model_dir, packaged_model_dir, user_model_dir
    from .pipeline import resolve_model_dir

    if localizer or segmenter:
        if model:
            raise DataError("give either --model or --localizer/--segmenter, not both")
        if not (localizer and segmenter):
            raise DataError("--localizer and --segmenter must be given together")
        loc, seg = Path(localizer), Path(segmenter)  # type: ignore[arg-type]
        return ModelChoice(loc, seg, None, "--localizer/--segmenter", card_name(None, loc, seg))
    shadows = None
    if model:
        model_dir, source = Path(model), "--model"
    else:
        model_dir = default_model_dir()
        if os.environ.get(MODEL_ENV):
            source = f"${MODEL_ENV}"
        elif model_dir.resolve() == user_model_dir().resolve():
            source = "user cache"
            shipped = packaged_model_dir()
            shadows = shipped if is_model_dir(shipped) else None
        else:
            source = "shipped asset"
    loc, seg = resolve_model_dir(model_dir)
    return ModelChoice(loc, seg, model_dir, source, card_name(model_dir, loc, seg), shadows)


# ------------------------------------------------------------------------------------------------ the batch
@dataclass
class CaseOutcome:
    """What happened to one input: ``status`` one of :data:`OUTCOMES` (``skipped``: complete before, with its
    recorded status in ``recorded_status``); ``message``: the error of a failed / bad input."""

    path: Path
    status: str
    seg_path: Path | None = None
    statistics: dict[str, Any] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    message: str = ""
    reason: str = ""
    recorded_status: str = ""


@dataclass
class BatchResult:
    """The outcomes of a batch in input order, the report and BIDS table written, and errors of the final steps."""

    outcomes: list[CaseOutcome]
    report_paths: list[Path] = field(default_factory=list)
    report_line: str = ""
    bids_table: Path | None = None
    errors: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {status: sum(o.status == status for o in self.outcomes) for status in OUTCOMES}


def _record_error(path: Path, reason: str, message: str, out: Path, predictor: Any) -> None:
    """Write the failed record of one input; a failure to do so is logged, never fatal to the batch."""
    from .outputs import write_error_outputs

    try:
        write_error_outputs(path, reason, message, out, predictor.metadata())
    except Exception as exc:  # noqa: BLE001 - the batch must go on
        log.error("could not record the failure of %s: %s: %s", path, type(exc).__name__, exc)


def segment_case(predictor: Any, path: Path, out: Path, *, overwrite: bool = False,
                 overlay: bool = True) -> CaseOutcome:
    """Segment and record one input; any error of this input becomes its outcome (and, where possible, its
    ``failed`` record), except a case another process wrote meanwhile (``bad_input``, its files kept)."""
    from .outputs import segment_file
    from .pipeline import SegmentationError

    try:
        written = segment_file(predictor, path, out, overwrite=overwrite, overlay=overlay)
    except FileExistsError as exc:  # another process wrote this case meanwhile: never replace its work
        return CaseOutcome(path, "bad_input", message=str(exc), reason="exists")
    except DataError as exc:
        _record_error(path, "bad_input", str(exc), out, predictor)
        return CaseOutcome(path, "bad_input", message=str(exc), reason="bad_input")
    except SegmentationError as failure:
        return CaseOutcome(path, "failed", message=str(failure), reason=failure.reason)
    except Exception as exc:  # noqa: BLE001 - one input's error must not end the batch
        reason = f"error:{type(exc).__name__}"
        _record_error(path, reason, f"{type(exc).__name__}: {exc}", out, predictor)
        return CaseOutcome(path, "failed", message=str(exc), reason=reason)
    return CaseOutcome(path, "flagged" if written.flags else "ok", seg_path=written.paths["seg"],
                       statistics=dict(written.metadata["statistics"]), flags=list(written.flags),
                       warnings=list(written.metadata["warnings"]))


def _refresh_report(out: Path) -> None:
    """Rebuild OUT/report.html after a case; a failure is logged, never fatal (the final rebuild reports it)."""
    from .outputs import VOLUMES_CSV
    from .report import write_report

    if not (out / VOLUMES_CSV).is_file():  # nothing recorded yet
        return
    try:
        write_report(out)
    except Exception as exc:  # noqa: BLE001 - the report must not stop the segmentation of the batch
        log.warning("report.html not updated: %s: %s", type(exc).__name__, exc)


def segment_batch(predictor: Any, inputs: Sequence[Path], out: Path, *, resume: bool = False,
                  overwrite: bool = False, overlay: bool = True, states: dict[str, str] | None = None,
                  bids_out: Path | None = None, participants: Path | None = None,
                  on_case: Callable[[CaseOutcome], None] | None = None, progress: bool = True) -> BatchResult:
    """Segment ``inputs`` into ``out`` (see the module docstring).

    ``states``: each case's state before the batch (:func:`~.outputs.check_outputs_free`, which also refuses
    existing outputs without ``resume``/``overwrite``; computed here when not given). ``on_case`` is called with
    every outcome as soon as it is known (the CLI prints it).
    """
    from tqdm import tqdm

    from .outputs import VOLUMES_CSV, case_name, check_outputs_free, load_case_record, rebuild_volumes_table
    from .report import write_report

    out = Path(out)
    inputs = [Path(p) for p in inputs]
    if states is None:
        states = check_outputs_free(out, inputs, overwrite=overwrite, resume=resume)
    outcomes: list[CaseOutcome] = []
    result = BatchResult(outcomes)
    try:
        for path in tqdm(inputs, desc="segment", unit="scan", disable=not progress or len(inputs) < 2):
            name = case_name(path)
            state = states.get(name, "absent")
            if resume and state == "complete":
                recorded = str((load_case_record(out, name) or {}).get("status"))
                outcome = CaseOutcome(path, "skipped", recorded_status=recorded)
            else:
                outcome = segment_case(predictor, path, out, overwrite=overwrite or state == "partial",
                                       overlay=overlay)
                _refresh_report(out)  # after every finished case: an interrupted batch has the report of what is done
            outcomes.append(outcome)
            if on_case is not None:
                on_case(outcome)
        try:
            rebuild_volumes_table(out)
            if bids_out is not None:
                from .bids_derivatives import export_bids_derivatives

                result.bids_table = export_bids_derivatives(
                    out, bids_out, participants=participants,
                    model_name=str((getattr(predictor, "model_info", None) or {}).get("card_name") or ""))
        except (DataError, OSError) as exc:
            result.errors.append(str(exc))
        try:
            if (out / VOLUMES_CSV).is_file():  # else nothing was recorded: no report
                report = write_report(out, also_to=[bids_out] if bids_out is not None and bids_out.is_dir() else [])
                result.report_paths, result.report_line = list(report.paths), report.line()
        except Exception as exc:  # noqa: BLE001 - the outputs are written; a missing report is an error, not a crash
            result.errors.append(f"report.html not written: {type(exc).__name__}: {exc}")
    except KeyboardInterrupt as exc:
        with contextlib.suppress(Exception):  # best effort; --resume rebuilds it too
            rebuild_volumes_table(out)
        with contextlib.suppress(Exception):  # best effort; 'report OUT' or --resume rebuilds it too
            write_report(out)
        exc.outcomes = outcomes  # type: ignore[attr-defined]
        raise
    return result

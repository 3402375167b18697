"""Run the paper's studies from real training runs and write their tables (T1-T7).

=====  ===================================================================================================
T1     cohort: per site n, groups, age, sex, field strength, voxel size, reconstruction, role
T2     rater reliability: intra-/interrater ICC of DN volume (ICC(2,1) primary, ICC(3,1)) and Dice
T3     architecture benchmark: every architecture trained with the same split, data, budget and inferer,
       applied in the same two-step pipeline (same localizer) to the internal test set; Dice per side,
       time per epoch, parameters
T4     one step (the segmentation network slid over the whole volume) vs two steps (localize, crop, segment):
       Dice per side and inference time on the internal test set
T5     external sites: the two-step model vs the classical baseline tool (template built from training cases
       only), Dice per side with paired t-test and Wilcoxon P values
T6     unseen sites (leave one site out): localizer and segmenter retrained without the site, automated vs
       manual DN volume and mean susceptibility: Pearson r, ICC(2,1)/ICC(3,1), Bland-Altman, per site
T7     failure modes: the fold-0 two-step model and the classical baseline (fold-0 template) applied to phantoms
       of the ``hard`` preset (new subjects of every site), Dice and failure rate (Dice < 0.5) with confidence
       intervals per bin of each hard-case factor, and the paired deep-vs-baseline difference per bin
       (:mod:`dentate_research.studies.failure_modes`)
=====  ===================================================================================================

One module per table, each registering its :class:`~dentate_research.studies.registry.Study` (name, table id,
title, table and training runs) with :mod:`~dentate_research.studies.registry`; the paper's reference numbers are
in :mod:`~dentate_research.studies.paper`. :class:`StudyRunner` is what the tables share: the data and
splits, the training runs (trained or reused), and the inference and evaluation of one case.

Every training run is a real :func:`dentate_research.training.train_stage` call; completed runs in the work
folder are reused (their ``model.json`` proves completion) so that a study can be resumed, provided their saved
``config.yaml`` matches what the invocation composes (:meth:`StudyRunner.reusable`, :func:`settings_changed`).

Fan-out (``reproduce ... hydra/launcher=slurm|submitit_local``): with a
:class:`~dentate_research.training.launch.JobLauncher`, :meth:`StudyRunner.launch_runs` first lists every training
run the selected studies need (:meth:`StudyRunner.planned_runs`), submits the ones not finished yet as one job each
(localizers first when segmenters train on their crops), waits and gathers the run folders; the studies then find
every run finished. Without a launcher (the default) runs are trained in this process when a study needs them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shlex
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..data.atomic import write_csv_atomic, write_text_atomic
from ..data.io import Volume, load_image, load_label
from ..data.manifest import Case, read_manifest
from ..data.splits import load_split, make_splits, write_splits
from ..data.units import case_image_in_ppm
from ..evaluation.metrics import case_identity, evaluate_case
from .paper import PAPER
from .registry import look_up_study
from .settings import StudySettings
from .tables import provenance_block, write_json

log = logging.getLogger(__name__)

ComposeFn = Callable[[list[str]], Any]


class StudyRunner:
    """Holds the data, splits, trained runs and per-case tables of one reproduction."""

    def __init__(self, settings: StudySettings, compose_train_cfg: ComposeFn):
        self.s = settings
        self.compose = compose_train_cfg
        self.per_case_dir = settings.out_dir / "per_case"
        self.fig_dir = settings.out_dir / "figures"
        self.runs: dict[str, dict[str, Any]] = {}
        self.timeline: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ data and runs
    def prepare_data(self) -> None:
        s = self.s
        if s.manifest is not None:
            manifest = s.manifest
            data_desc = f"manifest {manifest}"
        else:
            manifest = s.phantom_data_dir / "manifest.tsv"
            if not manifest.exists():
                from ..data.phantom import generate_dataset

                manifest = generate_dataset(manifest.parent, preset=str(s.data.preset), seed=s.data.seed,
                                            n_jobs=s.data.n_jobs, n_subjects_per_site=s.data.n_subjects_per_site)
            cohort = (f", {s.data.n_subjects_per_site} subjects per site" if s.data.n_subjects_per_site else "")
            data_desc = f"synthetic QSM phantoms, preset '{s.data.preset}', seed {s.data.seed}{cohort}"
        self.manifest = Path(manifest).resolve()
        self.cases = read_manifest(self.manifest)
        self.by_id = {c.case_id: c for c in self.cases}
        self.splits = make_splits(self.cases, n_folds=s.splits.n_folds, test_fraction=s.splits.test_fraction,
                                  external_sites=s.splits.external_sites, seed=s.splits.seed)
        self.splits["manifest"] = str(self.manifest)
        self.split_file = write_splits(self.splits, s.out_dir / "splits", overwrite=True)
        from ..training.artifacts import git_sha

        self.provenance = {"command": s.command or "python -m dentate_research reproduce", "study": s.name,
                           "data": f"{data_desc}, {len(self.cases)} scans",
                           "git": git_sha(exclude=[s.out_dir]),  # its own tables are not a code change
                           "finished_utc": ""}

    def fold_cases(self, fold: str) -> tuple[list[Case], list[Case], list[Case]]:
        """(train, val, test) cases of a fold of the study's split file (``'0'``, ``'loso:<site>'``, ...)."""
        split = load_split(self.split_file, fold)
        get = self.by_id.__getitem__
        if not split.test:
            raise ValueError(f"split '{split.name}' has no test cases (splits.test_fraction = "
                             f"{self.s.splits.test_fraction} of {len(self.cases)} scans); raise test_fraction or add "
                             "data")
        return [get(i) for i in split.train], [get(i) for i in split.val], [get(i) for i in split.test]

    def run_dir(self, stage: str, arch: str, fold: str) -> Path:
        """The work-folder run directory of one stage / architecture / fold."""
        return (self.s.work_dir / "runs" / f"{stage}_{arch}_{fold.replace(':', '-')}").resolve()

    @staticmethod
    def run_finished(run_dir: Path) -> bool:
        return (run_dir / "model.json").exists() and (run_dir / "run_info.json").exists()

    def reusable(self, stage: str, arch: str, fold: str) -> bool:
        """True when ``reuse_runs`` is on and the run is finished; a finished run trained with other settings than
        this invocation would use raises :class:`StaleRunError` naming them, never mixing it into the tables."""
        run_dir = self.run_dir(stage, arch, fold)
        if not (self.s.reuse_runs and self.run_finished(run_dir)):
            return False
        from omegaconf import OmegaConf

        composed = OmegaConf.to_container(
            self.compose(self.train_overrides(stage, arch, fold, self.crop_localizer_run(stage, fold))), resolve=True)
        changed = settings_changed(OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml")), composed)
        card = json.loads((run_dir / "model.json").read_text())
        if Path(self.split_file).exists() and "train_cases" in card:  # same settings, other cases: not this study's
            split = load_split(self.split_file, fold)
            for part, now in (("train_cases", split.train), ("val_cases", split.val)):
                if sorted(card.get(part) or []) != sorted(now):
                    changed.append(f"{part}: {len(card.get(part) or [])} cases, not the {len(now)} of this study's "
                                   f"split of fold {fold}")
        if changed:
            shown = "; ".join(changed[:5]) + (f"; and {len(changed) - 5} more" if len(changed) > 5 else "")
            raise StaleRunError(f"run {stage}/{arch}/{fold} in {run_dir} is finished but was trained with other "
                               f"settings than this invocation's ({shown}): give another work_root, move that "
                               "run folder away, or set reuse_runs=false to train every run again")
        return True

    def train_overrides(self, stage: str, arch: str, fold: str, localizer_run: Path | None = None) -> list[str]:
        """The ``configs/train.yaml`` overrides of one run (``localizer_run``: the crops' localizer, if any)."""
        s = self.s
        overrides = [*s.train_overrides, f"stage={stage}", f"+arch={arch}",
                     f"data.manifest={self.manifest}", f"data.root={self.manifest.parent}",
                     "data.generate_if_missing=null", f"data.label_rater={s.rater}",
                     "split=cv", f"split.file={self.split_file}", f"split.fold='{fold}'",
                     "split.create_if_missing=false", f"paths.run_dir={self.run_dir(stage, arch, fold)}",
                     f"seed={s.seed}", f"trainer.device={s.device}", "trainer.resume=false"]
        if stage == "localization":
            overrides += list(s.localizer_overrides)
        else:
            overrides += list(s.arch_overrides.get(arch, []))
            if fold.startswith("loso:"):
                overrides += list(s.loso_overrides)
            if localizer_run is not None:  # train and validate on the crops this fold's localizer makes at inference
                overrides += ["stage.crop.source=localizer", f"stage.crop.localizer_run={localizer_run}"]
        return overrides

    def train(self, stage: str, arch: str, fold: str) -> Path:
        """Train (or reuse) one stage on one fold; returns the run directory."""
        s = self.s
        run_dir = self.run_dir(stage, arch, fold)
        key = f"{stage}/{arch}/{fold}"
        if self.runs.get(key, {}).get("launcher") or self.runs.get(key, {}).get("reused") is False:
            return run_dir  # trained in this invocation (by a launcher job or here): keep its provenance
        if self.reusable(stage, arch, fold):
            self.runs[key] = {"run_dir": str(run_dir), "reused": True}
            return run_dir
        if not s.allow_training:
            raise RuntimeError(f"run {key} is not finished in {run_dir} and allow_training is false")
        loc_dir = None
        if stage == "segmentation" and s.crops_from_localizer:
            loc_dir = self.train("localization", s.localizer_arch, fold)
        cfg = self.compose(self.train_overrides(stage, arch, fold, loc_dir))
        from ..training import train_stage

        t0 = time.perf_counter()
        if run_dir.exists():  # an interrupted run: start it again from scratch
            import shutil

            shutil.rmtree(run_dir)
        train_stage(cfg)
        self.runs[key] = {"run_dir": str(run_dir), "reused": False, "seconds": time.perf_counter() - t0}
        return run_dir

    def localizer(self, fold: str = "0") -> Path:
        """The fold's localization run (trained or reused)."""
        return self.train("localization", self.s.localizer_arch, fold)

    # ------------------------------------------------------------------ fan-out through a launcher
    def planned_runs(self) -> list[tuple[str, str, str]]:
        """(stage, arch, fold) of every training run the selected studies use, localizers before segmenters."""
        s = self.s
        runs: list[tuple[str, str, str]] = []

        def add(stage: str, arch: str, fold: str) -> None:
            if stage == "segmentation" and s.crops_from_localizer:
                add("localization", s.localizer_arch, fold)
            if (stage, arch, fold) not in runs:
                runs.append((stage, arch, fold))

        for name in s.studies:
            for stage, arch, fold in look_up_study(name).runs(self):
                add(stage, arch, fold)
        return runs

    def crop_localizer_run(self, stage: str, fold: str) -> Path | None:
        """The run folder of the localizer whose crops a planned segmentation run trains on
        (``crops_from_localizer``), else None."""
        if stage == "segmentation" and self.s.crops_from_localizer:
            return self.run_dir("localization", self.s.localizer_arch, fold)
        return None

    def dry_run_plan(self) -> list[dict[str, Any]]:
        """Compose and validate (:func:`~dentate_research.schema.check_train_settings`) the train config of every
        planned run without reading images, generating phantoms or writing anything: the sites come from the
        manifest (read as a table) or from the phantom preset's site list. Returns one row per run (key, device,
        budget, patch, mixed precision, label scheme) in training order; a bad setting raises
        :class:`~dentate_research.schema.SettingsError` naming the run."""
        from ..models.registry import get_arch
        from ..schema import SettingsError, check_train_settings
        from ..training.backends import get_backend

        s = self.s
        if s.manifest is not None:
            self.manifest = s.manifest.resolve()
            sites = sorted({c.site for c in read_manifest(self.manifest)})
        else:
            from ..data.phantom import PRESETS, SITE_PROFILES

            if s.data.preset not in PRESETS:
                raise SettingsError(f"data.preset={s.data.preset!r} is not allowed; allowed: {', '.join(PRESETS)}")
            self.manifest = (s.phantom_data_dir / "manifest.tsv").resolve()
            sites = list(SITE_PROFILES)  # every preset generates every site
        self.splits = {"development_sites": [x for x in sites if x not in s.splits.external_sites]}
        self.split_file = (s.out_dir / "splits" / "splits.json").resolve()
        rows = []
        for stage, arch, fold in self.planned_runs():
            key = f"{stage}/{arch}/{fold}"
            try:
                cfg = self.compose(self.train_overrides(stage, arch, fold, self.crop_localizer_run(stage, fold)))
                check_train_settings(cfg)
            except Exception as exc:  # noqa: BLE001 - one line naming the run, whatever composition raised
                raise SettingsError(f"run {key}: {exc}") from exc
            t = cfg.trainer
            labels = "cerebellum" if stage == "localization" else str(cfg.stage.label_scheme)
            backend = get_backend(get_arch(str(cfg.arch.name)).framework)
            cap = t.max_minutes if backend.stops_early else f"none ({backend.framework} runs epochs x iterations)"
            rows.append({"run": key, "device": str(t.device), "epochs": int(t.epochs),
                         "iterations_per_epoch": int(t.iterations_per_epoch),
                         "iterations": int(t.epochs) * int(t.iterations_per_epoch), "batch_size": int(t.batch_size),
                         "patch_size": "x".join(str(int(v)) for v in cfg.stage.patch_size), "amp": bool(t.amp),
                         "max_minutes": cap, "label_scheme": labels,
                         "run_dir": str(self.run_dir(stage, arch, fold))})
        return rows

    def launch_runs(self, launcher: Any) -> list[str]:
        """Train every planned run that is not finished as its own job through ``launcher`` (a
        :class:`~dentate_research.training.launch.JobLauncher`), wait and gather; returns the keys of the jobs run.

        A finished run is reused (``reuse_runs``), an interrupted one is started again from scratch. Localizers
        go first when segmenters train on their crops (``crops_from_localizer``), the rest in one batch.
        """
        import shutil

        s = self.s
        planned = self.planned_runs()
        if s.crops_from_localizer:
            waves = [[r for r in planned if r[0] == "localization"], [r for r in planned if r[0] != "localization"]]
        else:
            waves = [planned]
        launched: list[str] = []
        for wave in waves:
            keys, configs = [], []
            for stage, arch, fold in wave:
                key, run_dir = f"{stage}/{arch}/{fold}", self.run_dir(stage, arch, fold)
                if self.reusable(stage, arch, fold):
                    self.runs[key] = {"run_dir": str(run_dir), "reused": True}
                    continue
                from omegaconf import OmegaConf

                overrides = self.train_overrides(stage, arch, fold, self.crop_localizer_run(stage, fold))
                configs.append(OmegaConf.to_container(self.compose(overrides), resolve=True))
                keys.append(key)
                if run_dir.exists():  # an interrupted run: start it again from scratch
                    shutil.rmtree(run_dir)
            if not configs:
                continue
            log.info("%d training run(s) as %s jobs (logs in %s): %s", len(configs), launcher.cluster,
                     launcher.folder.parent, ", ".join(keys))
            t0 = time.perf_counter()
            results = launcher.run(configs, keys)
            for key, result in zip(keys, results, strict=True):
                self.runs[key] = {"run_dir": result["run_dir"], "reused": False, "seconds": result["seconds"],
                                  "launcher": launcher.cluster, "job_id": result["job_id"], "host": result["host"]}
            self.timeline.append({"study": f"launch ({len(keys)} jobs)", "seconds": round(time.perf_counter() - t0, 1)})
            launched += keys
        return launched

    # ------------------------------------------------------------------ shared by the tables
    def predictor(self, loc_dir: Path, seg_dir: Path) -> Any:
        """The two-step :class:`~dentate_research.inference.DentatePredictor` of a localizer and a segmenter run."""
        from ..inference.pipeline import DentatePredictor

        return DentatePredictor(loc_dir, seg_dir, device=self.s.device)

    def load_case(self, case: Case, rater: str | None = None) -> tuple[Volume, Volume, Volume]:
        """Read a case once: the image as stored (method input), the image in ppm and the reference labels
        (``rater``'s, default the study's rater)."""
        volume = load_image(case.image)
        reference = load_label(case.label(rater or self.s.rater), reference=volume)
        return volume, case_image_in_ppm(case, volume), reference

    def baseline(self, fold: str = "0") -> Any:
        """The classical baseline with the fold's template (built from the fold's training cases only, cached
        in the work folder and reused)."""
        from ..baselines.classical import ClassicalBaseline
        from ..baselines.template import Template, build_template

        template_dir = self.s.work_dir / f"baseline_template_fold{fold}"
        if (template_dir / "template.json").exists() and self.s.reuse_runs:
            template = Template.load(template_dir)
        else:
            train, _, _ = self.fold_cases(fold)
            template = build_template(train, rater=self.s.rater)
            template.save(template_dir)
        return ClassicalBaseline(template)

    @staticmethod
    def segment_baseline(baseline: Any, volume: Volume) -> tuple[np.ndarray, float, str]:
        """(labels, seconds, flags ";"-joined) of the baseline on one volume."""
        from ..baselines.apply import apply_baseline

        output = apply_baseline(baseline, volume)
        return output.labels, output.seconds, output.flags

    @staticmethod
    def segment_two_step(predictor: Any, volume: Volume) -> tuple[np.ndarray | None, float, str]:
        """(labels, seconds, flags ";"-joined) of the two-step model on one volume; labels None and flag
        ``failed:<reason>`` when the pipeline gives up (:class:`~dentate_research.inference.SegmentationError`)."""
        from ..inference.pipeline import SegmentationError

        t0 = time.perf_counter()
        try:
            result = predictor.predict_volume(volume)
        except SegmentationError as failure:
            return None, time.perf_counter() - t0, f"failed:{failure.reason}"
        return result.labels, time.perf_counter() - t0, ";".join(result.flags)

    def evaluate_labels(self, case: Case, image_ppm: Volume, reference: Volume, labels: np.ndarray | None,
                        method: str, fold: str, extra: dict[str, Any] | None = None,
                        flag: str = "", reference_name: str | None = None) -> list[dict[str, Any]]:
        """Rows (one per side) of metrics for ``labels`` (None = the method failed: scored as empty)."""
        pred = np.zeros(image_ppm.shape, np.uint8) if labels is None else labels
        rows = []
        for row in evaluate_case(pred, reference, image_ppm):  # mean susceptibility in ppm whatever the units
            if flag:
                row["flag"] = ";".join(x for x in (str(row.get("flag") or ""), flag) if x)
            rows.append({**case_identity(case, method, fold, reference_name or self.s.rater), **row, **(extra or {})})
        return rows

    def save_per_case(self, df: pd.DataFrame, name: str) -> None:
        """``per_case/<name>.csv``."""
        self.per_case_dir.mkdir(parents=True, exist_ok=True)
        write_csv_atomic(df, self.per_case_dir / f"{name}.csv")

    def stamp(self) -> dict[str, Any]:
        """The provenance with the current time as ``finished_utc`` (for the table being written)."""
        self.provenance["finished_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        return self.provenance

    # ------------------------------------------------------------------ all
    def run(self, launcher: Any = None) -> dict[str, Path]:
        """Run the selected studies; with ``launcher`` the training runs are jobs first (:meth:`launch_runs`)."""
        t_start = time.perf_counter()
        self.s.out_dir.mkdir(parents=True, exist_ok=True)
        self.prepare_data()
        if launcher is not None:
            self.launch_runs(launcher)
        written: dict[str, Path] = {}
        for study in self.s.studies:
            t0 = time.perf_counter()
            entry = look_up_study(study)
            log.info("%s (%s: %s) ...", study, entry.table_id, entry.title)
            written[study] = entry.table(self)
            self.timeline.append({"study": study, "seconds": round(time.perf_counter() - t0, 1)})
            log.info("%s: %s (%s s)", study, written[study], self.timeline[-1]["seconds"])
        prov = self.stamp()
        settings = json.loads(json.dumps(dataclasses.asdict(self.s), default=str))  # paths as strings
        total_s = round(time.perf_counter() - t_start, 1)
        for entry in self.runs.values():  # each run's own record: wall time and commit, trained now or earlier
            entry.update(_run_record(Path(entry["run_dir"])))
        write_json({**prov, "settings": settings,
                    "runs": self.runs, "timeline_s": self.timeline,
                    "total_s": total_s}, self.s.out_dir / "provenance.json")
        self._write_index(written, total_s)
        return written

    def _write_index(self, written: dict[str, Path], total_s: float) -> None:
        """README.md of the study folder: the tables of this run, then any table an earlier run of the same study
        left in the folder (named as such, with the provenance line of its own file), then the training runs the
        tables come from and the study's total wall time: this invocation plus the training of runs it reused
        (a study resumed over several invocations is counted once, from each run's ``run_info.json``)."""
        lines = [f"# Study `{self.s.name}`", "", _provenance_line(self.provenance), "",
                 "| table | file | seconds |", "|---|---|---|"]
        secs = {t["study"]: t["seconds"] for t in self.timeline}
        for study, path in written.items():
            lines.append(f"| {study} | [{path.name}]({path.name}) | {secs.get(study, '')} |")
        own = {p.name for p in written.values()}
        for path in sorted(self.s.out_dir.glob("T[0-9]_*.md")):
            if path.name not in own:
                lines.append(f"| (earlier run) | [{path.name}]({path.name}) | see its header |")
        lines += ["", *_compute_lines(self.runs, total_s, self.provenance.get("git", {}).get("sha")), "",
                  "Per-case tables: `per_case/`; figures: `figures/`; splits: `splits/`; runs and settings: "
                  "`provenance.json`.", ""]
        write_text_atomic(self.s.out_dir / "README.md", "\n".join(lines))


def _run_record(run_dir: Path) -> dict[str, Any]:
    """Wall time (s), commit and finishing time of a finished run, from its ``run_info.json`` ({} if absent)."""
    try:
        info = json.loads((run_dir / "run_info.json").read_text())
    except (OSError, ValueError):
        return {}
    git = info.get("git") or {}
    return {"train_wall_s": round(float((info.get("timings_s") or {}).get("total", float("nan"))), 1),
            "git_sha": git.get("sha"), "git_dirty": git.get("dirty"), "finished_utc": info.get("finished_utc")}


def _compute_lines(runs: dict[str, dict[str, Any]], total_s: float, study_sha: str | None) -> list[str]:
    """Markdown: one row per training run (wall time, trained now or reused, commit) and the total wall time."""
    lines = ["## Training runs and wall time", "",
             "| run | trained | wall min | commit |", "|---|---|---|---|"]
    reused_s = 0.0
    for key, run in sorted(runs.items()):
        wall = run.get("train_wall_s", float("nan"))
        if run.get("reused") and np.isfinite(wall):
            reused_s += wall
        sha = run.get("git_sha") or "?"
        commit = sha[:7] + (" (uncommitted changes)" if run.get("git_dirty") else "")
        if study_sha and sha != study_sha:
            commit += " (earlier commit)"
        lines.append(f"| {key} | {'earlier invocation' if run.get('reused') else 'this invocation'} | "
                     f"{wall / 60:.1f} | {commit} |")
    lines += ["", f"Wall time: this invocation {total_s / 60:.1f} min; with the training of the runs it reused "
              f"({reused_s / 60:.1f} min, from their `run_info.json`) the study took "
              f"{(total_s + reused_s) / 3600:.2f} h in all."]
    return lines


def _provenance_line(p: dict[str, Any]) -> str:
    return provenance_block(p).strip()


class StaleRunError(RuntimeError):
    """A finished run in the work folder was trained with other settings than the invocation would use."""


# settings that name where things are, not how a run trains: a moved work folder keeps its runs reusable
_LOCATION_KEYS = ("paths.", "split.file", "stage.crop.localizer_run", "trainer.resume")
# the data's location: only its folder and file names count (data_<preset>_seed<seed>[_n<N>]/manifest.tsv)
_DATA_KEYS = {"data.manifest": 2, "data.root": 1}  # how many trailing path parts name the data


def settings_changed(saved: Mapping[str, Any], composed: Mapping[str, Any]) -> list[str]:
    """``key: saved -> composed`` for every setting of a run's saved ``config.yaml`` that the config composed now
    gives another value (locations excluded, the data's folder and file names compared; a key only one of them has
    is not a change: settings added to the schema later keep older runs reusable)."""
    def flat(node: Any, prefix: str = "") -> dict[str, Any]:
        if isinstance(node, Mapping):
            out: dict[str, Any] = {}
            for k, v in node.items():
                out.update(flat(v, f"{prefix}{k}."))
            return out
        return {prefix[:-1]: node}

    def same(key: str, x: Any, y: Any) -> bool:
        if key in _DATA_KEYS and isinstance(x, str) and isinstance(y, str):
            n = _DATA_KEYS[key]
            return Path(x).parts[-n:] == Path(y).parts[-n:]
        return x == y

    a, b = flat(saved), flat(composed)
    return [f"{k}: {a[k]!r} -> {b[k]!r}" for k in sorted(a.keys() & b.keys())
            if not k.startswith(_LOCATION_KEYS) and not same(k, a[k], b[k])]


def run_studies(settings: StudySettings, compose_train_cfg: ComposeFn, launcher: Any = None) -> dict[str, Path]:
    """Run the selected studies; returns {study: table path}. ``launcher``: a
    :class:`~dentate_research.training.launch.JobLauncher` to train the runs as jobs (None: in this process).
    See the module docstring."""
    if not settings.command:
        settings.command = "python -m dentate_research " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    return StudyRunner(settings, compose_train_cfg).run(launcher)


__all__ = ["PAPER", "StaleRunError", "StudyRunner", "StudySettings", "run_studies", "settings_changed"]

"""Fast checks of the out-of-family 'lamina' QSM phantom generator (benchmarks/oof_lamina.py).

Scans use a reduced field of view centred on the dentate nuclei (`fov_mm=SMALL_FOV`), so each takes well under 1 s.
"""

from __future__ import annotations

import ast
import csv
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import oof_lamina  # noqa: E402
from oof_lamina import SITES, LaminaScan, make_lamina_scan, write_lamina_bench  # noqa: E402

SMALL_FOV = (72.0, 72.0, 60.0)  # mm
EXPECTED_CODE = {"lamA": "RAS", "lamB": "LAS", "lamC": "PIR"}


@pytest.fixture(scope="module")
def scans() -> dict[str, LaminaScan]:
    return {site: make_lamina_scan(11, site, fov_mm=SMALL_FOV, coverage="partial") for site in SITES}


def _world_centroid(scan: LaminaScan, side: int) -> np.ndarray:
    idx = np.argwhere(scan.labels == side).astype(float)
    return scan.affine[:3, :3] @ idx.mean(0) + scan.affine[:3, 3]


def test_independent_of_project_package() -> None:
    tree = ast.parse((REPO / "benchmarks" / "oof_lamina.py").read_text())
    mods = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            mods |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            mods.add((node.module or "").split(".")[0])
    assert mods <= {"__future__", "argparse", "csv", "math", "time", "dataclasses", "pathlib", "typing", "nibabel",
                    "numpy", "scipy", "matplotlib"}, mods


def test_reproducible_same_seed_identical() -> None:
    a = make_lamina_scan(4, "lamC", fov_mm=SMALL_FOV)
    b = make_lamina_scan(4, "lamC", fov_mm=SMALL_FOV)
    assert np.array_equal(a.image, b.image)
    assert np.array_equal(a.labels, b.labels)
    assert np.array_equal(a.affine, b.affine)
    assert a.meta == b.meta
    c = make_lamina_scan(5, "lamC", fov_mm=SMALL_FOV)
    assert not np.array_equal(a.labels, c.labels) or not np.array_equal(a.image, c.image)


@pytest.mark.parametrize("site", SITES)
def test_grid_types_and_orientation(scans: dict[str, LaminaScan], site: str) -> None:
    s = scans[site]
    assert s.image.shape == s.labels.shape
    assert s.image.dtype == np.float32 and s.labels.dtype == np.uint8
    assert set(np.unique(s.labels)) == {0, 1, 2}
    assert "".join(nib.aff2axcodes(s.affine)) == EXPECTED_CODE[site] == s.meta["orientation"]
    zooms = np.sqrt((s.affine[:3, :3] ** 2).sum(0))
    assert np.allclose(zooms, [s.meta["voxel_x_mm"], s.meta["voxel_y_mm"], s.meta["voxel_z_mm"]])
    assert np.all(s.image[s.labels > 0] != 0)  # DN inside the brain mask
    if site == "lamB":
        assert sorted(np.round(zooms, 2)) == [0.8, 0.8, 2.0]
        # the 2 mm axis is the world superior-inferior axis
        assert np.argmax(np.abs(s.affine[2, :3])) == int(np.argmax(zooms))
    if site == "lamC":
        cosines = s.affine[:3, :3] / zooms
        assert np.degrees(np.arccos(np.abs(cosines).max(0).min())) > 5  # oblique grid
        assert s.meta["coverage"] == "inferior_cut" and s.meta["fov_cut_mm"] > 0


@pytest.mark.parametrize("site", SITES)
def test_laterality_world_ras(scans: dict[str, LaminaScan], site: str) -> None:
    left, right = _world_centroid(scans[site], 1), _world_centroid(scans[site], 2)
    assert left[0] < right[0] - 15.0  # label 1 = subject's left = smaller world x
    assert abs(left[1] - right[1]) < 10 and abs(left[2] - right[2]) < 10


@pytest.mark.parametrize("site", SITES)
def test_dn_volumes_in_range(scans: dict[str, LaminaScan], site: str) -> None:
    s = scans[site]
    vox = float(np.prod(np.sqrt((s.affine[:3, :3] ** 2).sum(0))))
    for side, name in ((1, "left"), (2, "right")):
        vol = np.count_nonzero(s.labels == side) * vox
        assert 600.0 <= vol <= 1200.0, (site, side, vol)
        assert vol == pytest.approx(s.meta[f"dn_volume_{name}_mm3"], abs=0.2)
        assert vol == pytest.approx(s.meta[f"dn_volume_true_{name}_mm3"], rel=0.12)


@pytest.mark.parametrize("site", SITES)
def test_dn_brighter_than_surrounding_white_matter(scans: dict[str, LaminaScan], site: str) -> None:
    s = scans[site]
    for side in (1, 2):
        m = s.labels == side
        shell = ndimage.binary_dilation(m, iterations=3) & (s.labels == 0) & (s.image != 0)
        assert s.image[m].mean() > s.image[shell].mean() + 0.02, (site, side)


def test_write_bench_files_csv_and_refusal(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    rows = write_lamina_bench(out, n_per_site=1, seed=2, sites=("lamB",), fov_mm=SMALL_FOV)
    assert len(rows) == 1 and rows[0]["site"] == "lamB"
    img = nib.load(str(out / rows[0]["image"]))
    lab = nib.load(str(out / rows[0]["label"]))
    assert img.get_data_dtype() == np.float32 and lab.get_data_dtype() == np.uint8
    assert int(img.header["qform_code"]) > 0 and int(img.header["sform_code"]) > 0
    assert np.allclose(img.get_qform(), img.affine, atol=1e-4) and np.allclose(lab.affine, img.affine)
    assert "".join(nib.aff2axcodes(img.affine)) == "LAS"
    with open(out / "cases.csv") as fh:
        csv_rows = list(csv.DictReader(fh))
    assert [r["case"] for r in csv_rows] == [rows[0]["case"]]
    assert {"case", "site", "image", "label", "dn_volume_left_mm3", "b0_tilt_deg"} <= set(csv_rows[0])
    with pytest.raises(FileExistsError):
        write_lamina_bench(out, n_per_site=1, seed=2, sites=("lamB",), fov_mm=SMALL_FOV)
    write_lamina_bench(out, n_per_site=1, seed=3, sites=("lamB",), fov_mm=SMALL_FOV, overwrite=True)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="site"):
        make_lamina_scan(0, "lamZ")
    with pytest.raises(ValueError, match="coverage"):
        make_lamina_scan(0, "lamC", coverage="half")
    with pytest.raises(ValueError, match="fov_mm"):
        make_lamina_scan(0, "lamA", fov_mm=(20, 20, 20))
    assert oof_lamina.SITES == ("lamA", "lamB", "lamC")

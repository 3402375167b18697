"""The README's main command, `demo`, runs end to end (tiny preset, minimal budget) and refuses to overwrite."""

from __future__ import annotations

import pytest

from dentate_research.cli.main import main


@pytest.mark.slow
def test_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--preset", "tiny", "--epochs", "1", "--iterations", "2",
                 "--no-install"]) == 0
    text = capsys.readouterr().out
    assert "[demo 4/4]" in text and "vs true" in text and "vs rater1" in text
    seg = list((out / "segment").glob("*/*_seg.nii.gz"))
    assert any(not p.name.endswith("_cropped_seg.nii.gz") for p in seg)
    assert (out / "model" / "localization" / "model.json").exists()
    assert (out / "model" / "segmentation" / "model.json").exists()
    assert main(["demo", "--out", str(out), "--preset", "tiny"]) == 2
    assert "--overwrite" in capsys.readouterr().err

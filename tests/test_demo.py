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


def test_demo_never_replaces_an_installed_model_without_asking(tmp_path, monkeypatch, capsys):
    cache = tmp_path / "cache"
    installed = cache / "dentate_research" / "default_model"
    for stage in ("localization", "segmentation"):
        (installed / stage).mkdir(parents=True)
        (installed / stage / "model.json").write_text("{}")
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    assert main(["demo", "--out", str(tmp_path / "demo"), "--preset", "tiny", "--install"]) == 2
    assert "--replace-installed" in capsys.readouterr().err
    assert (installed / "localization" / "model.json").read_text() == "{}"  # untouched
    assert not (tmp_path / "demo").exists()  # refused before any work
    assert main(["demo", "--out", str(tmp_path / "demo"), "--minutes", "0"]) == 2
    assert "--minutes must be > 0" in capsys.readouterr().err

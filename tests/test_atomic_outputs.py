"""Every file the package writes goes through data/atomic.py: a temporary name in the target folder, then a rename.

A static scan of the package: a call that writes a file (``Path.write_text`` / ``write_bytes``, ``DataFrame.to_csv``,
``Figure.savefig``, ``torch.save``, ``nib.save``, ``json.dump``) may only write to the temporary path that
``atomic_output`` yields (named ``tmp``) or to an in-memory buffer (a name bound to ``io.BytesIO()`` /
``io.StringIO()`` in that module, e.g. a PNG embedded in an HTML report). Appending one line to a log
(``open(..., "a")``) is not a replace and is not scanned.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pandas as pd

from dentate_research.data.atomic import write_csv_atomic, write_figure_atomic

PACKAGE = Path(__file__).resolve().parents[1] / "dentate_research"
METHOD_WRITERS = {"write_text", "write_bytes"}  # the path is the object: tmp.write_text(...)
FIRST_ARG_WRITERS = {"to_csv", "savefig"}  # the path is the first argument: frame.to_csv(tmp)
SECOND_ARG_WRITERS = {("torch", "save"), ("nib", "save"), ("json", "dump")}  # torch.save(obj, tmp)


def _is_tmp(node: ast.AST | None, buffers: frozenset[str] = frozenset()) -> bool:
    """``tmp`` or ``str(tmp)``, or a name bound to an in-memory buffer."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "str" and node.args:
        node = node.args[0]
    return isinstance(node, ast.Name) and (node.id == "tmp" or node.id in buffers)


def _memory_buffers(tree: ast.AST) -> frozenset[str]:
    """Names assigned from ``io.BytesIO(...)`` / ``io.StringIO(...)`` (or the bare class names) in a module."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            func = node.value.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if called in ("BytesIO", "StringIO"):
                names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return frozenset(names)


def non_atomic_writes(source: str) -> list[int]:
    """Line numbers of file writes that do not target an atomic temporary path (or an in-memory buffer)."""
    lines = []
    tree = ast.parse(source)
    buffers = _memory_buffers(tree)
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        name, owner = node.func.attr, node.func.value
        if name in METHOD_WRITERS:
            ok = _is_tmp(owner)
        elif name in FIRST_ARG_WRITERS:
            ok = bool(node.args) and _is_tmp(node.args[0], buffers)
        elif isinstance(owner, ast.Name) and (owner.id, name) in SECOND_ARG_WRITERS:
            ok = len(node.args) > 1 and _is_tmp(node.args[1], buffers)
        else:
            continue
        if not ok:
            lines.append(node.lineno)
    return lines


def test_the_scan_catches_a_direct_write():
    source = "frame.to_csv(path, index=False)\nPath(p).write_text('x')\ntorch.save(s, p)\n"
    assert non_atomic_writes(source) == [1, 2, 3]
    assert non_atomic_writes("frame.to_csv(tmp)\ntmp.write_text('x')\nnib.save(img, str(tmp))\n") == []
    # an in-memory buffer is not a file; a path that merely looks like one is still caught
    assert non_atomic_writes("buffer = io.BytesIO()\nfig.savefig(buffer, format='png')\n") == []
    assert non_atomic_writes("buffer = Path('x.png')\nfig.savefig(buffer)\n") == [2]


def test_every_package_write_is_atomic():
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "atomic.py":
            continue
        found = non_atomic_writes(path.read_text())
        if found:
            offenders[str(path.relative_to(PACKAGE))] = found
    assert not offenders, f"files written in place (use dentate_research.data.atomic): {offenders}"


def test_csv_and_figure_helpers_leave_no_temporary_file(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    write_csv_atomic(pd.DataFrame({"a": [1, 2]}), tmp_path / "t.csv")
    fig, _ = plt.subplots()
    write_figure_atomic(fig, tmp_path / "f.png", dpi=20)
    plt.close(fig)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.png", "t.csv"]
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"
    assert pd.read_csv(tmp_path / "t.csv")["a"].tolist() == [1, 2]

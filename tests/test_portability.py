"""The package imports on any OS: no POSIX-only module or signal at import time; the file lock is ``filelock``'s and
keeps the old ``fcntl.flock`` behaviour (exclusive across threads and processes, released when its holder is killed)."""

from __future__ import annotations

import ast
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from dentate_research.data.atomic import file_lock

PACKAGE = Path(__file__).resolve().parents[1] / "dentate_research"
POSIX_ONLY_MODULES = {"fcntl", "termios", "tty", "pty", "pwd", "grp", "resource", "posix", "crypt", "syslog"}
# signals and os functions that do not exist on Windows (signal.SIGINT / SIGTERM do)
POSIX_ONLY_ATTRS = {("signal", n) for n in ("SIGKILL", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGALRM",
                                           "SIGCHLD", "SIGPIPE", "SIGSTOP", "SIGCONT", "alarm", "setitimer")} | \
    {("os", n) for n in ("fork", "getuid", "geteuid", "killpg", "setsid", "getpgid", "sync")}


def _import_time_nodes(tree: ast.Module) -> list[ast.AST]:
    """Nodes that run when the module is imported: everything outside function bodies (class bodies included)."""
    out: list[ast.AST] = []
    stack: list[ast.AST] = list(tree.body)
    while stack:
        node = stack.pop()
        out.append(node)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            stack.extend(node.decorator_list)  # the body runs when called, not on import
        elif not isinstance(node, ast.Lambda):
            stack.extend(ast.iter_child_nodes(node))
    return out


def test_no_posix_only_module_or_signal_at_import_time():
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in _import_time_nodes(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            problems += [f"{path.relative_to(PACKAGE)}:{node.lineno} imports {n}" for n in names
                         if n.split(".")[0] in POSIX_ONLY_MODULES]
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and \
                    (node.value.id, node.attr) in POSIX_ONLY_ATTRS:
                problems.append(f"{path.relative_to(PACKAGE)}:{node.lineno} uses {node.value.id}.{node.attr}")
    assert not problems, problems


def test_package_imports_and_locks_without_fcntl(tmp_path):
    """As on an OS without fcntl: the modules that write outputs and the CLI import, and the lock works."""
    code = ("import sys; sys.modules['fcntl'] = None\n"
            "import dentate_research.cli.main, dentate_research.cli.segment, dentate_research.inference.outputs\n"
            "from dentate_research.data.atomic import file_lock\n"
            f"with file_lock({str(tmp_path / 'x.lock')!r}):\n    print('locked')\n")
    proc = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "locked", proc.stderr


def test_lock_excludes_threads_and_creates_its_folder(tmp_path):
    lock = tmp_path / "sub" / ".volumes.csv.lock"
    events: list[str] = []

    def hold(name: str) -> None:
        with file_lock(lock) as path:
            assert path == lock
            events.append(f"in {name}")
            time.sleep(0.1)
            events.append(f"out {name}")

    threads = [threading.Thread(target=hold, args=(str(i),)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(events[i].split()[1] == events[i + 1].split()[1] for i in range(0, 6, 2)), events
    assert lock.exists()  # left in place, so waiters share one file


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="SIGKILL is POSIX-only")
def test_lock_is_released_when_its_holder_is_killed(tmp_path):
    lock = tmp_path / "x.lock"
    code = ("import sys, time\nfrom dentate_research.data.atomic import file_lock\n"
            f"with file_lock({str(lock)!r}):\n    print('held', flush=True)\n    time.sleep(60)\n")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        got = threading.Event()

        def wait_for_lock() -> None:
            with file_lock(lock):
                got.set()

        waiter = threading.Thread(target=wait_for_lock, daemon=True)
        waiter.start()
        assert not got.wait(0.3)  # held by the other process
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        assert got.wait(10)  # the kernel released the killed holder's lock
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()

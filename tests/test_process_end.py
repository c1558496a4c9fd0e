"""The console script ends without the interpreter's teardown (portshift/cli/process_end.py), and
loses nothing by it: the exit status, everything printed, the ``atexit`` callbacks and the
threads that were still finishing. Real subprocesses; ``main(argv)`` from Python code still
raises ``SystemExit`` as before."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from portshift.cli import main


def run_script(body: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "entry.py"
    script.write_text(textwrap.dedent(body))
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=tmp_path)


def test_the_exit_status_and_all_output_survive_the_quick_end(tmp_path: Path) -> None:
    done = run_script(
        """
        import atexit, sys, threading, time
        from pathlib import Path
        from portshift.cli import main

        def late() -> None:
            time.sleep(0.3)
            Path("thread.txt").write_text("finished")

        threading.Thread(target=late).start()  # not a daemon: the exit waits for it, as usual
        atexit.register(lambda: print("atexit ran", flush=False))
        sys.stdout.write("#" * 100_000)  # buffered, not flushed by the script
        sys.argv = ["portshift", "--version"]
        main()
        """,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("#") == 100_000
    assert "portshift, version" in done.stdout and done.stdout.rstrip().endswith("atexit ran")
    assert (tmp_path / "thread.txt").read_text() == "finished"


def test_an_error_keeps_its_exit_code_and_its_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "portshift", "no-such-command"], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert done.returncode == 2
    assert done.stderr.startswith("portshift: error: No such command") and "Traceback" not in done.stderr


def test_main_with_arguments_raises_system_exit_as_before(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as ended:
        main(["--version"])
    assert ended.value.code == 0
    assert "portshift, version" in capsys.readouterr().out

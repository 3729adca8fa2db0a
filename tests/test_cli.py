"""The `tagger` entry point: subcommands are listed and resolved lazily."""

from __future__ import annotations

import subprocess
import sys

from worker import cli

# Written out, not read from cli.COMMANDS: dropping or renaming a command must fail this test.
EXPECTED = ["split", "train", "export", "evaluate", "import-base", "predict", "worker", "compare", "feedback", "review"]


def test_help_lists_every_subcommand(capsys) -> None:
    try:
        cli.main(["--help"])
    except SystemExit as exc:
        assert exc.code == 0
    out = capsys.readouterr().out
    # command lines are indented 4 spaces; wrapped help continues at a deeper indent
    listed = [line.split()[0] for line in out.splitlines() if line.startswith("    ") and line[4] != " "]
    assert listed == EXPECTED, out


def test_worker_subcommand_does_not_import_torch() -> None:
    code = (
        "import sys; from worker import cli; p = cli.build_parser('worker'); p.parse_args(['worker', '--check']); "
        "print('torch' in sys.modules, 'exporter' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "False"]


def test_unknown_subcommand_is_an_error() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "worker.cli", "no-such-command"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert "invalid choice" in proc.stderr

"""Running `fedpriv` in-process as a user's command line does, and checking what it left."""

from __future__ import annotations

import hashlib
from pathlib import Path

from cli.main import main


def run(argv: list) -> int:
    """`fedpriv ARGV` through `cli.main.main`; paths and numbers may be given as such."""
    return main([str(a) for a in argv])


def one_line_error(capsys, argv: list, *needles: object) -> str:
    """Run `fedpriv ARGV`: exit 2, exactly one `fedpriv: error:` line naming each needle."""
    code = run(argv)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, (code, captured.err)
    assert len(lines) == 1 and lines[0].startswith("fedpriv: error: "), lines
    assert "Traceback" not in captured.err + captured.out
    for needle in needles:
        assert str(needle) in lines[0], (needle, lines[0])
    return lines[0]


def digest(*roots: Path) -> dict[str, str]:
    """Every file (by content) and folder under `roots`: equal before and after = untouched."""
    out: dict[str, str] = {}
    for root in roots:
        for path in [root, *sorted(root.rglob("*"))] if root.is_dir() else [root]:
            out[str(path)] = (hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file()
                              else "folder" if path.is_dir() else "missing")
    return out

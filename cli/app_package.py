"""This installation's Flower app as a FAB: where it is, its files, its sha256.

The sha256 of a FAB is what Flower calls the run's ``fab_hash`` (``flwr ls`` shows it),
and what a partner approves. ``flwr run DIR`` builds the FAB by walking everything under
DIR, a checkout's ``.venv`` included (tens of thousands of files: about a minute here)
and then filtering with ``.gitignore`` and Flower's include rules. Here the walk skips the
folders ``.gitignore`` ignores (Flower would drop every file in them), and Flower's own
``build_fab_from_files`` applies the same rules to what is left: the same bytes, the
same hash, in a fraction of a second. ``fedpriv server`` submits a staged copy of exactly
these files; ``fedpriv client`` approves their hash by default.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tomllib
from pathlib import Path

import server as server_package
from common.errors import ConfigError

GITIGNORE = ".gitignore"


def find_app_dir(explicit: Path | None = None) -> Path:
    """The folder whose pyproject.toml declares the Flower app (the fedpriv checkout)."""
    folder = explicit or Path(server_package.__file__).resolve().parents[1]
    try:
        text = (folder / "pyproject.toml").read_text()
        components = tomllib.loads(text)["tool"]["flwr"]["app"]["components"]
    except (OSError, tomllib.TOMLDecodeError, KeyError, TypeError):
        components = {}
    if "serverapp" in components and "clientapp" in components:
        return folder.resolve()
    raise ConfigError(f"no Flower app at {folder}: expected a pyproject.toml with "
                      "[tool.flwr.app.components]; run from a fedpriv checkout (pip install -e) "
                      "or pass --app-dir")


def app_files(app_dir: Path) -> dict[str, Path]:
    """The app's files by relative POSIX path, without the folders .gitignore ignores."""
    from flwr.cli.utils import build_pathspec, load_gitignore_patterns

    gitignore = app_dir / GITIGNORE
    ignored = build_pathspec(load_gitignore_patterns(
        gitignore.read_bytes() if gitignore.is_file() else b""))
    files: dict[str, Path] = {}
    for folder, subfolders, names in os.walk(app_dir):
        relative = Path(folder).relative_to(app_dir)
        subfolders[:] = sorted(d for d in subfolders if d != ".git"
                               and not ignored.match_file(f"{(relative / d).as_posix()}/"))
        for name in names:
            path = Path(folder) / name
            if not path.is_symlink():  # Flower skips links too
                files[(relative / name).as_posix()] = path
    return files


def fab_bytes(files: dict[str, Path]) -> bytes:
    """The FAB Flower builds from these files (its own builder and rules)."""
    from flwr.cli.build import build_fab_from_files

    return build_fab_from_files(files)[0]


def fab_hash(files: dict[str, Path]) -> str:
    return hashlib.sha256(fab_bytes(files)).hexdigest()


def stage(files: dict[str, Path], destination: Path) -> Path:
    """A fresh copy of the app's files in `destination`, for `flwr run` to build quickly."""
    if destination.exists():
        shutil.rmtree(destination)
    for relative, source in files.items():
        target = destination / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    return destination

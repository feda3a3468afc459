"""A run directory: what makes it new or resumable, checked before anything starts.

A run writes ``run.json`` (the Flower run its ledger records belong to, and its
settings) when it starts; ``--resume RUN_DIR`` continues from it.
"""

from __future__ import annotations

import json
from pathlib import Path

from common.config import RunConfig
from common.errors import ConfigError

RUN_FILE = "run.json"


def check_run_dir(cfg: RunConfig) -> Path:
    """The run directory, checked before anything starts.

    A new run refuses a folder that holds one (a ledger is never overwritten); a resumed
    run needs the run.json its first start wrote.
    """
    run_dir = Path(cfg.federation.run_dir)
    if cfg.federation.resume:
        saved_run(run_dir)
    elif (run_dir / "ledger.jsonl").exists() or (run_dir / RUN_FILE).exists():
        raise ConfigError(f"invalid --run-dir {run_dir}: it already holds a run "
                          "(its ledger is kept); choose another --run-dir, or continue it "
                          f"with --resume {run_dir}")
    return run_dir


def saved_run(run_dir: Path) -> dict:
    """The run.json of `run_dir`: {"ledger_run": id, "config": flat run config}."""
    path = run_dir / RUN_FILE
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        RunConfig.from_flat(saved["config"])
        int(saved["ledger_run"])
    except FileNotFoundError:
        raise ConfigError(f"cannot resume {run_dir}: {path} not found (not a fedpriv run "
                          "directory, or the run never started)") from None
    except (OSError, ValueError, KeyError, TypeError, ConfigError) as exc:
        raise ConfigError(f"cannot resume {run_dir}: {path} is unreadable or corrupt "
                          f"({exc})") from None
    return saved

"""Run-config flags, generated from common.config: a setting has one name in the CLI,
the Flower run config and the messages nodes receive."""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path
from typing import get_type_hints

from common.config import SECTIONS, RunConfig, key_of
from common.errors import ConfigError

RESUME_KEY = "resume"
# Set by the command itself, never by a flag: `fedpriv server` writes the admitted keys.
NO_FLAG = (RESUME_KEY, "ledger-keys")


def add_run_config_flags(parser: argparse.ArgumentParser) -> None:
    defaults = RunConfig().to_flat()
    for section, cls in SECTIONS.items():
        group = parser.add_argument_group(f"{section} settings")
        hints = get_type_hints(cls)
        for f in fields(cls):
            key, hint = key_of(f.name), hints[f.name]
            if key in NO_FLAG:
                continue  # --resume RUN_DIR below; ledger-keys from `fedpriv server`
            if hint is bool:
                group.add_argument(f"--{key}", action=argparse.BooleanOptionalAction,
                                   default=None, help=f"(default: {defaults[key]})")
            else:
                group.add_argument(f"--{key}", type=str, default=None,
                                   metavar=hint.__name__.upper(),
                                   help=f"(default: {defaults[key]!r})")


def add_resume_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--resume", type=Path, default=None, metavar="RUN_DIR",
                        help="continue the run in RUN_DIR from its last good checkpoint and "
                        "its ledger, with the settings it was started with")


def run_config_from(args: argparse.Namespace, base: dict | None = None) -> RunConfig:
    """The run config the flags give, over `base`; or a resumed run's saved one."""
    given = {key: value for key in RunConfig().to_flat() if key not in NO_FLAG
             and (value := getattr(args, key.replace("-", "_"), None)) is not None}
    if getattr(args, "resume", None) is not None:
        from server.rundir import saved_run

        if given:
            raise ConfigError(f"--resume continues with the settings the run was started with: "
                              f"drop --{next(iter(given))}")
        saved = saved_run(args.resume)["config"]
        return RunConfig.from_flat({**saved, "run-dir": str(args.resume), RESUME_KEY: True})
    return RunConfig.from_flat({**(base or {}), **given})

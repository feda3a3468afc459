"""User-facing errors: the CLI prints their message as one line and exits non-zero."""


class FedPrivError(Exception):
    """A mistake in input the user can fix; the message names the file, field or flag."""


class ConfigError(FedPrivError):
    """A setting is missing, unknown or out of range."""


class DataError(FedPrivError):
    """A data file cannot be used as it is."""


class ModelError(FedPrivError):
    """A model cannot be loaded, or arrays do not fit it."""


class LedgerError(FedPrivError):
    """A key or ledger file cannot be used as it is; the message names the file."""


def require(condition: bool, flag: str, value: object, why: str) -> None:
    """The one validation step: ConfigError "invalid FLAG VALUE: WHY" unless `condition`.

    `flag` is how the user gave the setting (``--epsilon``, ``node-config max-epsilon``),
    so the message names what to fix.
    """
    if not condition:
        raise ConfigError(f"invalid {flag} {value!r}: {why}")

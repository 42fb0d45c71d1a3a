"""`python -m mindrl.plan` as a program, and validate()'s refusal of a job that does not fit."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from mindrl.config import load_config, validate
from mindrl.plan.check import MemoryCheck
from mindrl.plan.devices import DEVICES, GiB, device_bytes

ROOT = Path(__file__).resolve().parents[2]


def test_plan_json_rows_peak_and_exit_status() -> None:
    proc = subprocess.run([sys.executable, "-m", "mindrl.plan", "--config-name", "grpo_tiny_cpu", "--device-gb", "8",
                           "--json"], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    plan = json.loads(proc.stdout)
    assert plan["fits"] is True and plan["capacity"] == 8 * GiB
    (rank,) = plan["ranks"]  # TP1 PP1: the first rank is the heaviest
    phases = {p["name"]: p for p in rank["phases"]}
    assert set(phases) == {"training", "reference forward", "rollout"}  # shared weights: no push phase
    train = phases["training"]
    rows = {r["name"]: r["bytes"] for r in train["rows"]}
    # The tiny Qwen2 in fp32: weights = 4 bytes x parameters; Adam: two fp32 moments; the grads fp32 buffer.
    assert rows["weights (parameters, training dtype)"] == 4 * rank["params"]
    assert rows["optimizer states (Adam moments)"] == 8 * rank["params"]
    assert train["peak"] == sum(r["bytes"] for r in train["rows"] if r["in_peak"])
    assert train["headroom"] == 8 * GiB - train["peak"] and train["fits"] is True
    # The cpu backend packs the rollout's linears (generate_config.packed_linear unset): one copy of every linear's
    # weight, by hand for the tiny Qwen2 (2 layers, hidden 128, 4 heads + 2 KV heads of 32, FFN 256, vocab 64):
    # QKV 256 x 128, proj 128 x 128, fc1 512 x 128, fc2 128 x 256 per layer, and the LM head 64 x 128, in fp32.
    rollout = {r["name"]: r["bytes"] for r in phases["rollout"]["rows"]}
    assert rollout["packed linear weights (packed_linear)"] == 4 * (2 * (256 + 128 + 512 + 256) * 128 + 64 * 128)


def test_validate_refuses_a_plan_that_does_not_fit_naming_phase_and_row() -> None:
    cfg = load_config("grpo_tiny_cpu")
    capacity = 2 * 1024 ** 2  # 2 MiB: the tiny model's state fits, one training micro-batch does not
    errors = validate(cfg, check_paths=False, memory_check=MemoryCheck(capacity))
    assert len(errors) == 1, errors
    msg = errors[0]
    assert msg.startswith("memory: the job does not fit"), msg
    assert "phase '" in msg and "largest row '" in msg and "> capacity 2.00 MiB" in msg, msg
    assert "rl_config.skip_memory_check=true" in msg


def test_skip_memory_check_is_the_escape_hatch() -> None:
    cfg = load_config("grpo_tiny_cpu", ["rl_config.skip_memory_check=true"])
    assert validate(cfg, check_paths=False, memory_check=MemoryCheck(1)) == []


def test_device_names() -> None:
    assert device_bytes("a3-64g") == int(61.0 * GiB) and device_bytes(gb=2) == 2 * GiB
    assert set(DEVICES) == {"h100-80g", "h200-141g", "a100-80g", "rtx4090-24g", "910b-64g", "a3-64g"}
    for bad in ({"name": "h100"}, {"gb": 0}):
        try:
            device_bytes(**bad)
        except ValueError as err:
            assert "device" in str(err)
        else:
            raise AssertionError(f"{bad} accepted")


def test_lora_recipe_is_planned_with_adapters_only_in_the_optimizer() -> None:
    """The 24 GB LoRA recipe as the trainer builds it: a bf16 frozen base, fp32 rank-32 adapters on the seven peft
    targets, grads and Adam moments of the adapters only, no reference copy. Hand count of Qwen2.5-7B's adapters:
    per layer r x sum(in + out) over q, k, v, o, gate, up, down = 32 x 90,112; 28 layers."""
    proc = subprocess.run([sys.executable, "-m", "mindrl.plan", "--config-name", "grpo_qwen25_7b_lora_24g", "--device",
                           "rtx4090-24g", "--json"], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    plan = json.loads(proc.stdout)
    (rank,) = plan["ranks"]
    h, kv, inter = 3584, 4 * 128, 18944
    per_layer = 32 * ((h + h) + (h + kv) + (h + kv) + (h + h) + 2 * (h + inter) + (inter + h))
    assert per_layer == 32 * 90_112
    adapters = 28 * per_layer
    train = {r["name"]: r["bytes"] for r in {p["name"]: p for p in rank["phases"]}["training"]["rows"]}
    assert train["grads (DDP fp32 buffers)"] == 4 * adapters
    assert train["optimizer states (Adam moments)"] == 8 * adapters
    assert train["fp32 main params (optimizer's copy)"] == 0  # fp32 adapters need no master copy
    base = rank["params"] - adapters
    assert train["weights (parameters, training dtype)"] == 2 * base + 4 * adapters
    assert not any(r.startswith("reference model") for r in train)  # the actor with adapters off
    assert plan["fits"] is True

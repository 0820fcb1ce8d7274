"""Distributed training on CPU with gloo: the accelerate configs parse, a real 2-process DDP run of train_sft.py
matches the 1-process run of the same global batch and saves a final folder that loads, FSDP2's `fully_shard` on a
CPU mesh gives the reference gradients through the segmented forward (a layer called several times per step) and a
final folder that loads, and bench/distributed.py's --smoke mode runs end to end.

accelerate applies FSDP only on GPUs, so FSDP2 is exercised here directly with torch's `fully_shard`; DDP goes
through `accelerate launch --config_file configs/accelerate/ddp.yaml` with `--use_cpu true` (gloo).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, THINK, tiny_model
from test_train_sft import ENV, TINY_TRM, backbone, write_data  # noqa: F401  (backbone is a fixture)

CONFIGS = ROOT / "configs" / "accelerate"
REQUIRED = {
    "ddp.yaml": {"distributed_type": "MULTI_GPU"},
    "fsdp2.yaml": {"distributed_type": "FSDP"},
    "deepspeed_zero3.yaml": {"distributed_type": "DEEPSPEED"},
}


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_accelerate_configs_parse_with_the_required_settings(name):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(CONFIGS / name))
    assert str(config.distributed_type).endswith(REQUIRED[name]["distributed_type"])
    assert config.num_machines == 1 and config.num_processes >= 2
    if name == "fsdp2.yaml":
        fsdp = config.fsdp_config
        assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
        assert set(fsdp["fsdp_transformer_layer_cls_to_wrap"].split(",")) == {"SmolLM3DecoderLayer", "TransformerBlock"}
        assert fsdp["fsdp_state_dict_type"] == "SHARDED_STATE_DICT"
    if name == "deepspeed_zero3.yaml":
        ds = json.loads((ROOT / config.deepspeed_config["deepspeed_config_file"]).read_text())
        assert ds["zero_optimization"]["stage"] == 3
        assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True


def launch_train(backbone: Path, data: Path, output_dir: Path, processes: int) -> subprocess.CompletedProcess:
    """train_sft.py under `accelerate launch` with the DDP config on CPU; global batch 4 whatever `processes`."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / "ddp.yaml"),
               "--num_processes", str(processes), "--main_process_port", str(29400 + processes),
               str(ROOT / "train_sft.py"), "--model_name_or_path", str(backbone), "--dataset_name", str(data),
               "--output_dir", str(output_dir), "--max_length", "64", "--per_device_train_batch_size",
               str(4 // processes), "--max_steps", "3", "--logging_steps", "1", "--learning_rate", "1e-2",
               "--save_strategy", "steps", "--save_steps", "3", "--report_to", "none", "--bf16", "false",
               "--eval_fraction", "0", "--num_demo_answers", "0", "--dataloader_pin_memory", "false",
               "--use_cpu", "true", "--seed", "0", *TINY_TRM]
    return subprocess.run(command, capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=120)


def logged_losses(output_dir: Path) -> list[float]:
    state = json.loads((output_dir / "checkpoint-3" / "trainer_state.json").read_text())
    return [entry["loss"] for entry in state["log_history"] if "loss" in entry]


def test_ddp_two_processes_match_one_and_save_a_loadable_final_folder(backbone, tmp_path):  # noqa: F811
    from transformers import AutoModelForCausalLM

    data = write_data(tmp_path, "qa", count=16)
    two = launch_train(backbone, data, tmp_path / "ddp", processes=2)
    assert two.returncode == 0, two.stdout[-2000:] + two.stderr[-3000:]
    one = launch_train(backbone, data, tmp_path / "one", processes=1)
    assert one.returncode == 0, one.stderr[-3000:]
    checkpoint = tmp_path / "ddp" / "checkpoint-3"
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= set(os.listdir(checkpoint)), "not a 2-process run"
    losses = logged_losses(tmp_path / "ddp")
    assert len(losses) == 3 and all(map(torch.isfinite, torch.tensor(losses)))
    # Same rows in each global step, fp32: only the summation order differs.
    assert losses == pytest.approx(logged_losses(tmp_path / "one"), abs=1e-4)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "ddp" / "final", trust_remote_code=True)
    trained = dict(model.named_parameters())
    reference = AutoModelForCausalLM.from_pretrained(tmp_path / "one" / "final", trust_remote_code=True)
    for name, p in reference.named_parameters():
        torch.testing.assert_close(trained[name], p, atol=1e-4, rtol=1e-4)


def fsdp2_worker(out: str) -> None:
    """torchrun'd: the tiny model sharded with fully_shard (decoder layers, TRM blocks, root) on a gloo CPU mesh; each
    rank runs half the batch. Rank 0 checks loss and gradients against the whole batch on one unsharded copy, then
    saves a final folder from the gathered full state dict the way train_sft.save_final does."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.fsdp import fully_shard

    import train_sft
    from modeling_smollm_trm import TransformerBlock

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    ids = torch.randint(6, 90, (2 * world, 12), generator=torch.Generator().manual_seed(1))
    ids[:, 5] = THINK  # one `<think>` per row: the backbone runs per block of tokens and of thoughts
    reference = tiny_model(seed=0, attn_implementation="sdpa").train()
    model = tiny_model(seed=0, attn_implementation="sdpa").train()
    for module in model.modules():
        if type(module).__name__ == "SmolLM3DecoderLayer" or isinstance(module, TransformerBlock):
            fully_shard(module)
    fully_shard(model)
    reference(input_ids=ids, labels=ids).loss.backward()
    mine = ids[2 * rank : 2 * rank + 2]
    loss = model(input_ids=mine, labels=mine).loss  # every row scores the same number of tokens: mean of means
    loss.backward()
    losses = [torch.zeros(()) for _ in range(world)]
    dist.all_gather(losses, loss.detach())
    grads = {name: p.grad.full_tensor() for name, p in model.named_parameters()}
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        with train_sft.unsharded_class(model):
            model.save_pretrained(Path(out) / "final", state_dict=dict(state))
        expected = {name: p.grad for name, p in reference.named_parameters()}
        worst = max(((grads[n] - g).abs().max() / g.abs().max().clamp(min=1e-12)).item() for n, g in expected.items())
        reference_loss = reference(input_ids=ids, labels=ids).loss.item()
        result = {"losses": [x.item() for x in losses], "reference_loss": reference_loss, "worst_grad_rel": worst,
                  "class": type(model).__name__}
        (Path(out) / "fsdp2.json").write_text(json.dumps(result))
    dist.destroy_process_group()


def test_fsdp2_on_a_cpu_mesh_matches_the_unsharded_gradients_and_saves_a_loadable_folder(tmp_path):
    from transformers import AutoModelForCausalLM

    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29433",
               __file__, str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr[-4000:]
    found = json.loads((tmp_path / "fsdp2.json").read_text())
    assert found["class"].startswith("FSDP")
    assert sum(found["losses"]) / 2 == pytest.approx(found["reference_loss"], abs=1e-5)
    assert found["worst_grad_rel"] < 1e-5
    config = json.loads((tmp_path / "final" / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_smollm_trm.SmolLMTRMForCausalLM"
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "final", trust_remote_code=True)
    reference = tiny_model(seed=0)
    for name, p in reference.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], p)


def test_bench_distributed_smoke_runs_end_to_end(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "distributed.py"), "--out", str(tmp_path),
                             "--smoke"], capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=180)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["runs"]) == {"1gpu", "ddp", "resume"} and results["cpu_generate"]["ok"]
    runs = results["runs"]
    assert len(runs["1gpu"]["losses"]) == len(runs["ddp"]["losses"]) == 3
    assert sorted(runs["resume"]["losses"]) == ["2", "3"], "the resumed run did not start after checkpoint-1"
    assert all(run["loss_ok"] for run in runs.values())
    assert "| run | GPUs |" in result.stdout

if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    fsdp2_worker(sys.argv[1])

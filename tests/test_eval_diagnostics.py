"""The thought ablations of `eval --diagnostics`, proved against streams built by hand: zeroed thoughts are zeros,
shuffled and transplanted ones are another problem's, snapped ones the tokens they decode; and `follows_donor` counts
what it says."""

import torch
from conftest import THINK, tiny_model, tiny_text_config
from test_eval_runner import save_tiny

from eval.__main__ import main
from eval.diagnostics import ablated, applies, follows_donor, recorded_thoughts, replacement, thoughts_through
from modeling_smollm_trm import Depth

VIVID = dict(text_config=tiny_text_config(initializer_range=0.15))
A, B = [7, 8, 9, THINK, 10, 11], [20, 21, 22, THINK, 23, 24]  # same length: no padding, rows line up


def logits_given(model, row: list[int], thoughts: torch.Tensor) -> torch.Tensor:
    """Logits of `row` (one `<think>`) when its K thought positions hold `thoughts`, from one uncached pass."""
    think = row.index(THINK) + 1
    embed = model.get_input_embeddings()
    stream = torch.cat([embed(torch.tensor([row[:think]])), thoughts[None], embed(torch.tensor([row[think:]]))], 1)
    logits = model.lm_head(model.model.language_model(inputs_embeds=stream).last_hidden_state)[0]
    K = model.config.num_latents
    return torch.cat([logits[: think - 1], logits[think - 1 + K :]])  # aligned with the row, as the model returns


def own_thoughts(model, row: list[int]) -> torch.Tensor:
    context = torch.tensor([row[: row.index(THINK) + 1]])
    hidden = model.model.language_model(input_ids=context).last_hidden_state
    return model.model.thoughts(hidden, torch.ones_like(context, dtype=torch.bool), Depth(model.config.n_cycles, 1)
                                ).thoughts[0]


def test_zeroed_thoughts_are_zeros():
    model = tiny_model(**VIVID)
    with torch.no_grad(), thoughts_through(model, replacement(model, "zeroed", lambda: None)):
        ablated = model(input_ids=torch.tensor([A])).logits[0]
        reference = logits_given(model, A, torch.zeros(model.config.num_latents, model.config.text_config.hidden_size))
    torch.testing.assert_close(ablated, reference, atol=1e-5, rtol=0)


def test_snapped_thoughts_are_the_embeddings_of_the_tokens_they_decode():
    model = tiny_model(**VIVID, thought_output="token_mixture")
    with torch.no_grad():
        with model.watch_thoughts() as normal:
            plain = model(input_ids=torch.tensor([A])).logits[0]
        tokens = model.thought_logits(normal[0].readout[0]).argmax(-1)  # (K,)
        reference = logits_given(model, A, model.get_input_embeddings()(tokens))
        with thoughts_through(model, replacement(model, "snapped", lambda: None)):
            snapped = model(input_ids=torch.tensor([A])).logits[0]
    torch.testing.assert_close(snapped, reference, atol=1e-5, rtol=0)
    assert not torch.allclose(plain, reference, atol=1e-3), "the mixtures must differ from their tokens to bite"


def test_prior_only_thoughts_are_the_backbone_decoding_the_step_alone():
    """With the TRM's own outputs zeros, the first step's thoughts carry only the backbone's next token after
    `<think>`, and the second step's decode as its next tokens after `<think>` and after each of the first step's
    thoughts (a plain pass over them); the learned weights are back afterwards, and a model without the prior has no
    such ablation."""
    prior = {"thought_output": "token_mixture", "n_supervision_steps": 2, "thought_feedback": True,
             "thought_next_token_prior": True}
    model = tiny_model(**VIVID, **prior)
    weights = [model.model.thoughts.prior_scale.clone(), model.model.thoughts.out_norm.weight.clone()]
    context = torch.tensor([A[: A.index(THINK) + 1]])
    with torch.no_grad(), ablated(model, "prior_only", lambda: None):
        with model.watch_thoughts() as first:
            model(input_ids=context, n_supervision_steps=1)
        with model.watch_thoughts() as second:
            model(input_ids=context)
        stream = torch.cat([model.get_input_embeddings()(context), first[0].thoughts], dim=1)
        hidden = model.model.language_model(inputs_embeds=stream).last_hidden_state
        K = model.config.num_latents
        reads = model.lm_head(hidden[:, context.shape[1] - 1 : context.shape[1] - 1 + K])
        torch.testing.assert_close(model.thought_logits(second[0].readout), reads, atol=1e-3, rtol=1e-3)
        assert (first[0].readout[:, 1:] == 0).all()
    assert torch.equal(weights[0], model.model.thoughts.prior_scale)
    assert torch.equal(weights[1], model.model.thoughts.out_norm.weight)
    assert applies(model, "prior_only") and not applies(tiny_model(), "prior_only")


def test_shuffled_and_transplanted_thoughts_are_the_next_problems():
    model = tiny_model(**VIVID)
    batch = torch.tensor([A, B])
    with torch.no_grad():
        expected = [logits_given(model, A, own_thoughts(model, B)), logits_given(model, B, own_thoughts(model, A))]
        with thoughts_through(model, replacement(model, "shuffled", lambda: None)):
            shuffled = model(input_ids=batch).logits
        transplant = replacement(model, "transplant", lambda: model(input_ids=batch))
        with thoughts_through(model, transplant):
            transplanted = model(input_ids=batch).logits
        normal = model(input_ids=batch).logits
    for row in range(2):
        torch.testing.assert_close(shuffled[row], expected[row], atol=1e-5, rtol=0)
        torch.testing.assert_close(transplanted[row], expected[row], atol=1e-5, rtol=0)
    assert not torch.allclose(normal[0], expected[0], atol=1e-3), "the thoughts must matter for this to test anything"


def test_recording_leaves_the_thoughts_as_they_are():
    model = tiny_model(**VIVID)
    with torch.no_grad():
        plain = model(input_ids=torch.tensor([A, B])).logits
        with recorded_thoughts(model) as calls:
            recorded = model(input_ids=torch.tensor([A, B])).logits
    thoughts, readout = calls[0]
    assert len(calls) == 1 and thoughts.shape == (2, model.config.num_latents, model.config.text_config.hidden_size)
    torch.testing.assert_close(recorded, plain, atol=0, rtol=0)


def test_an_ablation_moves_the_readout_with_the_thoughts():
    """What eval records a row's thoughts decode to is what the row was given: the donor's readout, not a logit lens
    of the donor's embedding mixtures."""
    model = tiny_model(**VIVID, thought_output="token_mixture")
    batch = torch.tensor([A, B])
    with torch.no_grad():
        with model.watch_thoughts() as normal:
            model(input_ids=batch)
        with thoughts_through(model, replacement(model, "shuffled", lambda: None)), model.watch_thoughts() as shuffled:
            model(input_ids=batch)
    torch.testing.assert_close(shuffled[0].readout, normal[0].readout.roll(-1, dims=0), atol=0, rtol=0)
    torch.testing.assert_close(shuffled[0].thoughts, normal[0].thoughts.roll(-1, dims=0), atol=0, rtol=0)
    assert not torch.allclose(normal[0].readout, normal[0].thoughts, atol=1e-3)


def test_follows_donor_counts_only_problems_whose_donor_answers_otherwise():
    records = [{"gold": "1", "donor_gold": "2", "extracted": "2"}, {"gold": "2", "donor_gold": "3", "extracted": "2"},
               {"gold": "3", "donor_gold": "3", "extracted": "3"}, {"gold": "4", "donor_gold": "1", "extracted": "1"}]
    assert follows_donor(records) == 2 / 3
    assert follows_donor(records[2:3]) is None


def test_the_cli_writes_each_ablation_beside_the_normal_run(tmp_path):
    folder = save_tiny(tmp_path / "tiny-trm")
    out = tmp_path / "out"
    results = main(["--model", str(folder), "--task", "arith", "--depth", "2", "--limit", "6", "--batch_size", "3",
                    "--max_new_tokens", "3", "--diagnostics", "--output_dir", str(out)])
    assert [run["ablation"] for run in results["runs"]] == [None, "zeroed", "shuffled", "transplant", "snapped"]
    names = {path.name for path in out.iterdir()}
    assert {"tiny-trm__T2_N1__zeroed.jsonl", "tiny-trm__T2_N1__transplant.jsonl"} <= names
    transplant = results["runs"][3]
    assert transplant["follows_donor"] is None or 0.0 <= transplant["follows_donor"] <= 1.0
    assert "transplant thoughts" in (out / "results.md").read_text()

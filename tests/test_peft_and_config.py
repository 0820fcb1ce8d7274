"""PEFT LoRA round trip, and the errors that bad settings and bad input give."""

import pytest
import torch
from conftest import THINK, tiny_config, tiny_model, tiny_text_config
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from configuration_smollm_trm import SmolLMTRMConfig
from modeling_smollm_trm import SmolLMTRMForCausalLM


def test_lora_train_merge_save_reload_gives_the_merged_logits(tmp_path):
    model = tiny_model().train()
    trm_before = {n: p.clone() for n, p in model.model.thoughts.named_parameters()}
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], modules_to_save=["trm"])
    peft_model = get_peft_model(model, lora)
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.tensor([[7, 8, THINK, 9, 10], [11, THINK, 12, 13, 14]])
    for _ in range(3):
        peft_model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    merged = peft_model.merge_and_unload().eval()
    assert type(merged) is SmolLMTRMForCausalLM
    assert any(not torch.equal(p, trm_before[n]) for n, p in merged.model.thoughts.named_parameters()), "TRM did not train"
    expected = merged(input_ids=ids).logits
    merged.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, trust_remote_code=True, attn_implementation="eager")
    torch.testing.assert_close(reloaded(input_ids=ids).logits, expected, atol=0, rtol=0)


@pytest.mark.parametrize("settings, field", [
    ({"trm_num_heads": 3}, "trm_num_heads"),
    ({"num_latents": 0}, "num_latents"),
    ({"think_token_id": 10_000}, "think_token_id"),
    ({"thought_mode": "coconut"}, "thought_mode"),
    ({"thought_window": "ring"}, "thought_window"),
    ({"n_cycles": 0}, "n_cycles"),
    ({"halt_threshold": 1.5}, "halt_threshold"),
    ({"halt_threshold": 0.0}, "halt_threshold"),
    ({"forced_lm_loss_weight": -1.0}, "forced_lm_loss_weight"),
    ({"forced_lm_scope": "labelled"}, "forced_lm_scope"),
])
def test_invalid_settings_raise_a_value_error_naming_the_field(settings, field):
    with pytest.raises(ValueError, match=field):
        tiny_config(**settings)


def test_a_backbone_that_is_not_a_decoder_only_causal_lm_is_refused():
    with pytest.raises(ValueError, match="decoder-only causal LM"):
        SmolLMTRMConfig(text_config={"model_type": "t5"}, think_token_id=5)


def test_default_config_is_smollm3_3b_shaped():
    config = SmolLMTRMConfig()
    assert (config.text_config.model_type, config.text_config.hidden_size, config.num_latents) == ("smollm3", 2048, 256)


def test_config_round_trips_through_a_dict():
    config = tiny_config(thought_window="slide", n_supervision_steps=2)
    again = SmolLMTRMConfig(**config.to_dict())
    assert again.text_config.vocab_size == config.text_config.vocab_size
    assert (again.thought_window, again.n_supervision_steps) == ("slide", 2)


def test_from_base_wraps_a_loaded_backbone_and_takes_the_think_id_from_the_tokenizer():
    from conftest import tiny_tokenizer
    from transformers import SmolLM3ForCausalLM

    torch.manual_seed(0)
    backbone = SmolLM3ForCausalLM(tiny_text_config())
    tokenizer = tiny_tokenizer()  # already knows `<think>`: nothing is added, its id is taken
    model = SmolLMTRMForCausalLM.from_base(backbone, tokenizer=tokenizer, num_latents=4, trm_hidden_size=16,
                                           trm_num_heads=2)
    assert model.config.think_token_id == THINK and model.model.language_model is backbone.model
    ids = torch.tensor([[7, THINK, 8]])
    out = model(input_ids=ids, labels=ids)
    assert torch.isfinite(out.loss)
    embedding_rms = backbone.get_input_embeddings().weight.pow(2).mean().sqrt()
    assert model.model.thoughts.out_norm.weight[0].item() == pytest.approx(embedding_rms.item(), rel=1e-5)


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_from_base_keeps_the_attention_the_backbone_was_loaded_with(tmp_path, attention):
    from conftest import tiny_tokenizer
    from transformers import AutoModelForCausalLM, SmolLM3ForCausalLM

    SmolLM3ForCausalLM(tiny_text_config()).save_pretrained(tmp_path)
    backbone = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation=attention)
    model = SmolLMTRMForCausalLM.from_base(backbone, tokenizer=tiny_tokenizer(), num_latents=4, trm_hidden_size=16,
                                           trm_num_heads=2)
    # the composite config would otherwise leave the backbone's config (shared with the model) without one
    assert model.config._attn_implementation == attention
    assert model.model.language_model.config._attn_implementation == attention
    # and attention stays causal: a later token changes no earlier logit, through the thoughts or not
    ids = torch.tensor([[7, 8, 9, THINK, 10, 11, 12, 13]])
    changed = ids.clone()
    changed[0, -1] = 40
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits[0, :-1], model(input_ids=changed).logits[0, :-1])

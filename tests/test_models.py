"""Tiny model: build, forward, generate, Hugging Face save/load round trip, LoRA."""

import json
import random

import torch

from stagent_ray.config import ModelConfig
from stagent_ray.models.build import (build_tiny_model, count_parameters, load_model,
                                      load_tokenizer, save_checkpoint)
from stagent_ray.models.chat_format import format_tool_call
from stagent_ray.models.tokenizer import SYNTAX_LINES, train_tokenizer


def small_tokenizer():
    texts = SYNTAX_LINES + ["Find a quiet cafe near the river, open at 9:00."] * 5
    return train_tokenizer(texts, vocab_size=500)


def test_default_size_is_in_range():
    tok = train_tokenizer(SYNTAX_LINES, vocab_size=4096)
    model = build_tiny_model(ModelConfig(vocab_size=4096), tok)
    # The default config targets 5-20M parameters at the full 4096 vocabulary.
    n = count_parameters(model) - model.get_input_embeddings().weight.numel() + 4096 * 256
    assert 5e6 <= n <= 20e6, n


def test_build_forward_generate_save_load(tmp_path):
    tok = small_tokenizer()
    cfg = ModelConfig(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=2,
                      num_kv_heads=1)
    model = build_tiny_model(cfg, tok, seed=1).eval()
    ids = torch.tensor([tok.encode("Find a quiet cafe " + format_tool_call("x", {"a": 1}))])
    logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], len(tok))
    out = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > ids.shape[1]

    save_checkpoint(model, tok, str(tmp_path / "ckpt"))
    model2 = load_model(str(tmp_path / "ckpt"))
    tok2 = load_tokenizer(str(tmp_path / "ckpt"))
    assert tok2.encode("Find a quiet cafe") == tok.encode("Find a quiet cafe")
    assert torch.allclose(model2(ids).logits, logits, atol=1e-5)
    assert torch.equal(model2.generate(ids, max_new_tokens=8, do_sample=False), out)
    assert not (tmp_path / "ckpt.tmp").exists()


def test_numbers_tokenize_alike_in_tool_json_and_prose(tmp_path):
    """An answer copies "10:00-14:00" from the tool's JSON token for token: each digit is one
    id whether a quote, a colon or a space comes before it, also after a save/load."""
    tok = small_tokenizer()
    tok.save_pretrained(str(tmp_path / "tok"))
    for t in (tok, load_tokenizer(str(tmp_path / "tok"))):
        digits = [t.convert_tokens_to_ids(str(d)) for d in range(10)]
        for text in ['{"hours":"10:00-14:00","high_c":32}', "open 10:00-14:00, high 32°C"]:
            ids = t.encode(text)
            assert t.decode(ids) == text
            assert [i for i in ids if i in digits] == [digits[int(c)] for c in text if c.isdigit()]


def test_lora_merge_round_trip(tmp_path):
    from peft import LoraConfig, get_peft_model

    tok = small_tokenizer()
    cfg = ModelConfig(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=2,
                      num_kv_heads=1)
    model = build_tiny_model(cfg, tok)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)  # make the adapter change the output
    ids = torch.tensor([tok.encode("Find a cafe")])
    expected = peft_model(ids).logits
    merged = peft_model.merge_and_unload()
    save_checkpoint(merged, tok, str(tmp_path / "merged"))
    assert torch.allclose(load_model(str(tmp_path / "merged"))(ids).logits, expected, atol=1e-4)


def test_pretraining_text_states_each_name_twice_and_is_reproducible():
    from stagent_ray.models.lm_corpus import documents, place_document

    assert documents(20, seed=3, today="2026-06-01") == documents(20, seed=3, today="2026-06-01")
    assert len(documents(20, seed=3, today="2026-06-01", per_row=4)) == 5
    rng = random.Random(0)
    for _ in range(50):  # the name in the JSON record also appears in the prose around it
        doc = place_document(rng)
        name = json.loads(doc[doc.index("{"):doc.index("}") + 1])["name"]
        assert doc.count(name) >= 2, doc

"""A byte-level BPE tokenizer trained locally on the world's vocabulary (no download).

The chat-format markers (`<|im_start|>`, `<tool_call>`, ...) are special tokens, so each is
one id and a rendered conversation tokenises the same whether split into turns or not.
"""

from __future__ import annotations

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from stagent_ray.models.chat_format import IM_END, PROJECT_TEMPLATE, SPECIAL_TOKENS, format_tool_call

# Text every tokenizer must cover well, whatever the world holds: digits, dates, times,
# coordinates and the JSON of tool calls.
SYNTAX_LINES = [
    "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 25 30 45 50 60 90 100 500 1000",
    "2026-06-01 2026-06-15 08:30 12:00 18:45 23:59 31.2304,121.4737 -12.5,45.25",
    '{"name": "x", "arguments": {"query": "cafe", "radius": 2000, "limit": 5}}',
    "km min CNY AQI rating price open closed minutes hours [Unsolved]",
]


def train_tokenizer(texts: list[str], vocab_size: int = 4096) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `texts`; returns a left-padding HF fast tokenizer."""
    tok = Tokenizer(models.BPE())
    # Every digit is its own token, never merged with a space or a quote (as in Qwen's and
    # Llama 2's tokenizers): "10:00" in a tool's JSON and " 10:00" in the answer are then the
    # same digit tokens, so an answer copies numbers, times and dates from a tool response
    # token for token. Merged, the JSON's `10` and the prose's ` 10` are different ids and a
    # model from scratch writes plausible numbers instead of the tool's.
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\p{N}"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts + [format_tool_call("t", {"a": 1})], trainer=trainer)
    # padding_side must go to the constructor: an attribute set later is not saved.
    # The project's format as its chat template: apply_chat_template, vLLM and TGI render
    # what the project renders.
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=IM_END, pad_token="<|endoftext|>",
        additional_special_tokens=[t for t in SPECIAL_TOKENS if t not in (IM_END, "<|endoftext|>")],
        padding_side="left", chat_template=PROJECT_TEMPLATE)

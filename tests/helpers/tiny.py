"""A tiny random Qwen2 and a byte-level BPE tokenizer trained in well under a second.

Used by the test suite (session-scoped fixtures in conftest.py) and by scripts that need a model
without the network.
"""

from __future__ import annotations

from pathlib import Path

from chainforge.models import CHATML_TEMPLATE

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

CORPUS = [
    "What is 12 + 7? The answer is 19.",
    "Let me think step by step. Maybe the sum is 20, not sure. Perhaps I should check again.",
    "<reasoning_process>\n<think>Add the ones: 2 + 7 = 9.</think>\n<think>maybe carry\n"
    "<explanation>No carry is needed because 9 < 10.</explanation>\n</think>\n</reasoning_process>\n"
    "<summary>\n19\n</summary>",
    "<think> I think the answer is 42 </think> The answer is \\boxed{42}.",
    "system user assistant You are a helpful assistant. Answer with the final number.",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 + - * / = ( ) { } [ ] < > , . ? !",
    "The quick brown fox jumps over the lazy dog. Paris is the capital of France.",
]


def build_tokenizer(vocab_size: int = 400):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   bos_token=None, unk_token=None)
    fast.chat_template = CHATML_TEMPLATE
    return fast


def build_tiny_model(out: Path, layers: int = 2, hidden: int = 64, seed: int = 0, tokenizer=None) -> Path:
    """Save a random Qwen2 causal LM + tokenizer at `out` and return it."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = tokenizer or build_tokenizer()
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        tie_word_embeddings=True, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        bos_token_id=None,
    )
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    out = Path(out)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out

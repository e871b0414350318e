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


# What the scripted teacher writes for every prompt: a well-formed Super CoT whose answer is 7, so
# it is right exactly on the prompts whose reference is 7.
SEVEN_PIECES = ["<reasoning_process>\n<think>", "Add 3 and 4 to get 7.", "</think>\n</reasoning_process>\n<summary>\n",
                "\\boxed{7}", "\n</summary>"]
SEVEN = "".join(SEVEN_PIECES)


def build_scripted_model(out: Path, pieces: list, hidden: int = 32) -> Path:
    """A tiny Qwen2 that writes the concatenation of `pieces` and stops (<|im_end|>), whatever the
    chat prompt: each piece becomes one added token, and the weights make the model a bigram chain
    (the end of the generation prompt → piece 0 → piece 1 → … → <|im_end|>). A piece may be a dict
    {alternative: probability}: sampled at temperature 1 the model writes each alternative with that
    probability (greedy: the likeliest), so it is right on some prompts some of the time.

    How: the one layer writes nothing (zero output projections), so the last hidden state is the
    token's own embedding; chain tokens get one-hot embeddings and the untied LM head maps each to
    its successors, 50 nats above every other token (plus the log of an alternative's probability).
    Every piece and alternative must be distinct."""
    import math

    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    steps = [p if isinstance(p, dict) else {p: 1.0} for p in pieces]
    texts = [t for step in steps for t in step]
    if len(set(texts)) != len(texts) or len(texts) + 1 > hidden:
        raise ValueError("pieces must be distinct and fewer than `hidden`")
    tok = build_tokenizer()
    tok.add_tokens(texts)
    start = tok.apply_chat_template([{"role": "user", "content": "q"}], tokenize=True,
                                    add_generation_prompt=True)
    start = start["input_ids"] if isinstance(start, dict) or hasattr(start, "keys") else start
    layers = [{start[-1]: 1.0}] + [{tok.convert_tokens_to_ids(t): w for t, w in step.items()} for step in steps] \
        + [{tok.eos_token_id: 1.0}]
    if start[-1] in {t for layer in layers[1:-1] for t in layer}:
        raise ValueError("a piece is the token that opens the assistant turn")
    slot = {t: k for k, t in enumerate(t for layer in layers[:-1] for t in layer)}
    config = Qwen2Config(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        tie_word_embeddings=False, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        bos_token_id=None,
    )
    model = Qwen2ForCausalLM(config)
    with torch.no_grad():
        for param in model.parameters():
            param.zero_()
        model.model.norm.weight.fill_(1.0)
        for layer in model.model.layers:
            layer.input_layernorm.weight.fill_(1.0)
            layer.post_attention_layernorm.weight.fill_(1.0)
        for here_layer, next_layer in zip(layers, layers[1:]):
            total = sum(next_layer.values())
            for here in here_layer:
                model.model.embed_tokens.weight[here, slot[here]] = 1.0
                for after, weight in next_layer.items():
                    # RMSNorm scales a one-hot vector to sqrt(hidden)
                    model.lm_head.weight[after, slot[here]] = (50.0 + math.log(weight / total)) / math.sqrt(hidden)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    out = Path(out)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out

"""How many rows a batch holds: KV-cache bytes per row against free GPU memory or available RAM."""

from __future__ import annotations

from typing import Optional


def auto_batch_size(model, tokens_per_row: int, budget_bytes: Optional[int] = None,
                    ceiling: Optional[int] = None) -> int:
    """Rows per batch that fit: KV cache + logits per row against a share of free memory.

    GPU: 60% of the free device memory, up to 512 rows. CPU: 25% of available RAM, up to 64 rows
    (past that a CPU is compute-bound and larger batches only cost cache copies)."""
    import torch

    device = next(model.parameters()).device
    if budget_bytes is None:
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            budget_bytes = int(free * 0.6)
        else:
            budget_bytes = int(_available_ram() * 0.25)
    if ceiling is None:
        ceiling = 512 if device.type == "cuda" else 64
    per_row = bytes_per_row(model, tokens_per_row)
    return max(1, min(ceiling, budget_bytes // max(per_row, 1)))


def bytes_per_row(model, tokens_per_row: int) -> int:
    """Memory one decoding row needs: its KV cache at full length plus a few vocab-sized vectors."""
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    layers = getattr(cfg, "num_hidden_layers", 24)
    heads = getattr(cfg, "num_attention_heads", 16)
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    elem = next(model.parameters()).element_size()
    kv = 2 * layers * kv_heads * head_dim * elem * tokens_per_row
    vocab = 4 * 4 * getattr(cfg, "vocab_size", 32000)  # logits, probs, noise, sort (float32)
    activations = 8 * elem * (cfg.hidden_size + getattr(cfg, "intermediate_size", 4 * cfg.hidden_size))
    return kv + vocab + activations


def _available_ram() -> int:
    import psutil  # MemAvailable on Linux, the same figure on macOS and Windows

    return psutil.virtual_memory().available

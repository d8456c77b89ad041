"""Write a small random Llama that reads real English text, for runs without a hub.

No pre-trained causal LM can be downloaded where the hub is unreachable, yet the preference
methods (dpo, orpo, rlhf) need a causal LM. This writes one that is random but real in every
other way: a Llama with the WordPiece vocabulary of the built-in MiniLM (30,522 tokens, so
HH-RLHF dialogues tokenize into words, not bytes), [CLS] as BOS and [SEP] as EOS, safetensors
weights and a tokenizer, loadable by `model.name_or_path: runs/tiny-llama`.

    python examples/make_tiny_llama.py                  # -> runs/tiny-llama (4 layers, hidden 128)
    python examples/make_tiny_llama.py OUT --layers 2 --hidden 64

benchmarks/ uses the same model, so benchmark figures and these runs are comparable.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def lm_tokenizer() -> Any:
    """MiniLM's WordPiece tokenizer made LM-like: [CLS] opens a sequence, [SEP] ends a response."""
    from transformers import AutoTokenizer

    from lmtune.models.load import resolve_model_path

    tok = AutoTokenizer.from_pretrained(resolve_model_path("builtin:minilm"))
    tok.bos_token, tok.eos_token = "[CLS]", "[SEP]"
    return tok


def save_tiny_llama(out_dir: str | Path, layers: int = 4, hidden: int = 128, seed: int = 0) -> Path:
    """A random Llama (layers x hidden, 4 heads, MLP 4x hidden, 512 positions) over the MiniLM
    vocabulary, saved with its tokenizer to out_dir; returns out_dir."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = lm_tokenizer()
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    out = Path(out_dir)
    LlamaForCausalLM(cfg).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def main() -> None:
    """Command line: write the model folder."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "out", nargs="?", default="runs/tiny-llama", help="output folder (default runs/tiny-llama)"
    )
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    print(f"wrote {save_tiny_llama(a.out, a.layers, a.hidden, a.seed)}")


if __name__ == "__main__":
    main()

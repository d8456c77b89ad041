"""Tiny, seeded models and tokenizers built in-process: the fixtures every test tier uses.

Nothing here touches the network or disk (except `save_tiny`, which writes where it is told).
Tokenizers are trained once per argument set (lru_cache) on a small built-in corpus, so a
whole test session pays for training a handful of tokenizers, each in milliseconds.
Callers that mutate a tokenizer (add tokens, set padding_side) must `copy.deepcopy` it first.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

# Enough varied English for a few hundred BPE merges; also covers the words tests use.
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A language model predicts the next token from the tokens before it.",
    "Fine-tuning adapts a pre-trained model to a new task with a small dataset.",
    "Below is an instruction that describes a task. Write a response that completes the request.",
    "### Instruction: ### Input: ### Response:",
    "Summarize the following text in one sentence.",
    "Translate the sentence into French. What is the capital of France? Paris is the capital.",
    "The movie was great, I loved it. The movie was terrible, I hated it.",
    "This product works well and I would buy it again.",
    "The weather today is sunny with a light breeze from the west.",
    "user assistant system: You are a helpful assistant. Hello! How are you? I am fine, thanks.",
    "Tell me a joke. Why did the chicken cross the road? To get to the other side.",
    "Add two numbers: 2 + 3 = 5. Multiply 4 by 6 to get 24. Count 1 2 3 4 5 6 7 8 9 10.",
    "Positive negative neutral label text premise hypothesis entailment contradiction.",
    "Packing puts several short examples into one sequence to save padding.",
    "Attention masks keep tokens from looking at other examples or at padding.",
    "She sells sea shells by the sea shore, and the shells she sells are surely sea shells.",
    "In the morning we walk to the park, and in the evening we read books at home.",
    "Data cleaning removes duplicates, fixes whitespace and redacts personal information.",
    "Evaluate the model on held-out data and report accuracy, F1 and loss.",
]

SPECIALS = ["<unk>", "<s>", "</s>"]
PAD = "<pad>"


def _corpus() -> list[str]:
    # Repeat with small variations so BPE sees each merge often enough to learn it.
    lines = []
    for i in range(8):
        for line in CORPUS:
            lines.append(line if i % 2 == 0 else line.lower())
    return lines


@cache
def make_tokenizer(pad: bool = False, chat_template: str | None = None) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (~600 tokens) with <s>, </s>, <unk> and, if asked, <pad>.

    Cached per arguments: treat the result as read-only (deepcopy before changing it).
    """
    specials = SPECIALS + ([PAD] if pad else [])
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token=PAD if pad else None,
    )
    if chat_template is not None:
        fast.chat_template = chat_template
    return fast


@cache
def make_bert_tokenizer() -> PreTrainedTokenizerFast:
    """A small lower-cased WordPiece tokenizer with BERT's [CLS] [SEP] [PAD] [UNK] [MASK]."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre = pre_tokenizers.BertPreTokenizer()
    # A fixed vocabulary (not WordPieceTrainer, whose tie-breaking follows the process's hash
    # seed): every character, every character as a continuation, and the corpus words seen
    # at least twice. Identical in every process, so tiny-BERT results are reproducible.
    counts: dict[str, int] = {}
    for line in _corpus():
        for word, _ in pre.pre_tokenize_str(normalizer.normalize_str(line)):
            counts[word] = counts.get(word, 0) + 1
    chars = sorted({c for w in counts for c in w})
    words = sorted(w for w, n in counts.items() if n >= 2 and len(w) > 1)
    vocab_list = specials + chars + [f"##{c}" for c in chars] + words
    tok = Tokenizer(models.WordPiece({w: i for i, w in enumerate(vocab_list)}, unk_token="[UNK]"))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre
    tok.decoder = decoders.WordPiece()
    from tokenizers.processors import TemplateProcessing

    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        cls_token="[CLS]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        unk_token="[UNK]",
        mask_token="[MASK]",
    )


def _ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, int | None]:
    return {
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


def make_causal(arch: str, tokenizer: PreTrainedTokenizerBase, seed: int = 0) -> PreTrainedModel:
    """A 2-layer, hidden-32 causal LM of the given architecture (llama, gpt2, qwen2), seeded."""
    torch.manual_seed(seed)
    ids = _ids(tokenizer)
    if arch == "llama":
        cfg = LlamaConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            attention_dropout=0.0,
            **ids,
        )
        model: PreTrainedModel = LlamaForCausalLM(cfg)
    elif arch == "qwen2":
        cfg = Qwen2Config(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            attention_dropout=0.0,
            **ids,
        )
        model = Qwen2ForCausalLM(cfg)
    elif arch == "gpt2":
        cfg = GPT2Config(
            n_embd=32,
            n_inner=64,
            n_layer=2,
            n_head=4,
            n_positions=256,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            **ids,
        )
        model = GPT2LMHeadModel(cfg)
    else:
        raise ValueError(f"unknown tiny arch {arch!r}; use llama, gpt2 or qwen2")
    return model.eval()


def make_encoder_classifier(
    arch: str = "bert",
    num_labels: int = 2,
    tokenizer: PreTrainedTokenizerBase | None = None,
    seed: int = 0,
) -> PreTrainedModel:
    """A 2-layer, hidden-32 BERT sequence classifier with no dropout, seeded."""
    if arch != "bert":
        raise ValueError(f"unknown tiny encoder arch {arch!r}; use bert")
    tokenizer = tokenizer or make_bert_tokenizer()
    torch.manual_seed(seed)
    return BertForSequenceClassification(tiny_bert_config(tokenizer, num_labels=num_labels)).eval()


def tiny_bert_config(
    tokenizer: PreTrainedTokenizerBase, max_positions: int = 256, **extra: Any
) -> BertConfig:
    """The 2-layer, hidden-32 BERT every encoder test builds on: no dropout, tokenizer's pad."""
    return BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=max_positions,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=tokenizer.pad_token_id,
        **extra,
    )


def save_tiny(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, path: str | Path) -> Path:
    """Write model (safetensors) and tokenizer into a local model folder and return it."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)  # safetensors: the only format transformers 5 writes
    tokenizer.save_pretrained(path)
    return path

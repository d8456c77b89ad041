"""Zero-/few-shot baselines of a causal LM (evaluate/baselines.py): in-context prompts of k
demonstrations per class, then the row, followed by each label's words; the label whose
continuation is most likely wins (mean token log-probability by default).
"""

from __future__ import annotations

import inspect
import re
from typing import Any

import torch

from lmtune.config import BaselinesConfig
from lmtune.evaluate.baselines_math import Rows, draw_shots, label_scores, metric_row
from lmtune.losses.logprobs import sequence_logps


def render(template: str, row: dict[str, Any]) -> str:
    """The prompt for one row: {text} and {text_pair} filled in one pass (braces in text stay)."""
    text = row["text"]
    if row.get("text_pair") is not None and "{text_pair}" not in template:
        text = f"{text}\n{row['text_pair']}"
    values = {"text": text, "text_pair": row.get("text_pair") or ""}
    return re.sub(r"\{(text|text_pair)\}", lambda m: values[m.group(1)], template)


def _bos(tokenizer: Any) -> list[int]:
    # The BOS the tokenizer itself adds (Llama does, GPT-2/Qwen do not); segments are then
    # tokenized without special tokens so no EOS sneaks in mid-prompt.
    ids = tokenizer("a")["input_ids"]
    return (
        [ids[0]]
        if tokenizer.bos_token_id is not None and ids and ids[0] == tokenizer.bos_token_id
        else []
    )


def candidates(tokenizer: Any, context: str, words: list[str]) -> tuple[list[int], list[list[int]]]:
    """Context ids (BOS included) and each label continuation's ids.

    Tokenizing context + continuation together and taking the tail keeps the tokens the
    model would see in running text (a separately tokenized " positive" can split
    differently, e.g. with SentencePiece's leading-space marker).
    """
    bos = _bos(tokenizer)
    ctx = bos + tokenizer(context, add_special_tokens=False)["input_ids"]
    conts = []
    for w in words:
        full = bos + tokenizer(context + " " + w, add_special_tokens=False)["input_ids"]
        joint = full[: len(ctx)] == ctx and len(full) > len(ctx)
        tail = (
            full[len(ctx) :] if joint else tokenizer(" " + w, add_special_tokens=False)["input_ids"]
        )
        conts.append(tail)
    return ctx, conts


@torch.no_grad()
def continuation_logprobs(
    model: torch.nn.Module,
    pairs: list[tuple[list[int], list[int]]],
    batch_size: int,
    pad_id: int,
    device: Any = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of log p(continuation token | everything before), token count) per (context, continuation).

    Left padding puts every continuation at the end, so only the last positions need logits
    (logits_to_keep): a 150k-word vocabulary times the whole prompt would not fit in memory.
    position_ids are given explicitly because left padding would otherwise shift them.
    """
    sums, counts = torch.zeros(len(pairs)), torch.zeros(len(pairs))
    # Older or remote-code models may not take logits_to_keep: they return every position.
    trim = "logits_to_keep" in inspect.signature(model.forward).parameters
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
    for b in range(0, len(order), batch_size):
        idx = order[b : b + batch_size]
        seqs = [pairs[i][0] + pairs[i][1] for i in idx]
        width = max(map(len, seqs))
        ids = torch.tensor([[pad_id] * (width - len(s)) + s for s in seqs])
        mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs])
        keep = max(len(pairs[i][1]) for i in idx) + 1
        out = model(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            position_ids=(mask.cumsum(-1) - 1).clamp_min(0).to(device),
            **({"logits_to_keep": keep} if trim else {}),
        )
        logits = out.logits[:, -keep:].float().cpu()
        sel_logits, targets, seq_index = [], [], []
        for row, i in enumerate(idx):
            n = len(pairs[i][1])
            # logits at position t predict token t+1: the n continuation tokens are the last n
            # of the sequence, predicted by positions -n-1 .. -2.
            sel_logits.append(logits[row, keep - n - 1 : keep - 1])
            targets += pairs[i][1]
            seq_index += [row] * n
        s, c = sequence_logps(
            torch.cat(sel_logits), torch.tensor(targets), torch.tensor(seq_index), len(idx)
        )
        sums[idx], counts[idx] = s, c
    return sums, counts


def fit_demos(demo_lens: list[int], budget: int) -> int:
    """How many leading demonstrations fit in budget tokens (the later ones are dropped)."""
    used = total = 0
    for n in demo_lens:
        if total + n > budget:
            break
        total += n
        used += 1
    return used


def causal_predictions(
    model: torch.nn.Module,
    tokenizer: Any,
    bcfg: BaselinesConfig,
    words: list[str],
    eval_rows: Rows,
    demos: Rows,
    demo_words: list[str],
    max_length: int,
    device: Any,
) -> tuple[list[int], dict[str, int]]:
    """Predicted label index per eval row with these demonstrations, and fitting statistics."""
    demo_texts = [
        f"{render(bcfg.prompt, d)} {w}\n\n" for d, w in zip(demos, demo_words, strict=True)
    ]
    demo_lens = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in demo_texts]
    longest = max(len(tokenizer(" " + w, add_special_tokens=False)["input_ids"]) for w in words) + 1
    pairs, stats = [], {"rows_cut": 0, "rows_with_dropped_demos": 0, "demos_used": 0}
    for row in eval_rows:
        query = render(bcfg.prompt, row)
        q_len = len(_bos(tokenizer)) + len(tokenizer(query, add_special_tokens=False)["input_ids"])
        used = fit_demos(demo_lens, max_length - longest - q_len)
        stats["rows_with_dropped_demos"] += used < len(demos)
        stats["demos_used"] += used
        ctx, conts = candidates(tokenizer, "".join(demo_texts[:used]) + query, words)
        room = max_length - max(map(len, conts))
        if len(ctx) > room:  # the row alone is too long: keep BOS and the end (the "Label:" cue)
            stats["rows_cut"] += 1
            bos = _bos(tokenizer)
            ctx = bos + ctx[len(ctx) - room + len(bos) :]
        pairs += [(ctx, c) for c in conts]
    sums, counts = continuation_logprobs(
        model, pairs, bcfg.batch_size, tokenizer.pad_token_id, device
    )
    scores = label_scores(sums, counts, bcfg.scoring).view(len(eval_rows), len(words))
    return scores.argmax(-1).tolist(), stats


def causal_baselines(
    model: torch.nn.Module,
    tokenizer: Any,
    bcfg: BaselinesConfig,
    labels: list[str],
    eval_rows: Rows,
    train_rows: Rows | None,
    k: int,
    seed: int,
    max_length: int,
    device: Any,
    notes: list[str],
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Zero-shot and k-shot in-context rows (label log-likelihood, argmax)."""
    word_of = {lab: bcfg.label_words.get(lab, lab) for lab in labels}
    words = [word_of[lab] for lab in labels]
    gold = [labels.index(r["label"]) for r in eval_rows]
    zero, stats = causal_predictions(
        model, tokenizer, bcfg, words, eval_rows, [], [], max_length, device
    )
    if stats["rows_cut"]:
        notes.append(
            f"zero-shot: {stats['rows_cut']} row(s) longer than model.max_length ({max_length}) "
            "kept only their end"
        )
    rows = [metric_row("zero-shot", 0, gold, [zero], labels)]
    if train_rows:
        preds = []
        for s in range(bcfg.seeds):
            shots = draw_shots(train_rows, labels, k, seed + s, notes if s == 0 else None)
            p, st = causal_predictions(
                model,
                tokenizer,
                bcfg,
                words,
                eval_rows,
                shots,
                [word_of[r["label"]] for r in shots],
                max_length,
                device,
            )
            preds.append(p)
            if st["rows_cut"]:
                notes.append(
                    f"few-shot seed {seed + s}: {st['rows_cut']} prompt(s) longer than model.max_length "
                    f"({max_length}) kept only their end"
                )
            if st["rows_with_dropped_demos"]:
                notes.append(
                    f"few-shot seed {seed + s}: demonstrations did not fit model.max_length "
                    f"({max_length}) for {st['rows_with_dropped_demos']} of {len(eval_rows)} rows; "
                    f"the later ones were dropped (mean {st['demos_used'] / len(eval_rows):.1f} "
                    f"of {len(shots)} used)"
                )
        row = metric_row("few-shot", k, gold, preds, labels)
        rows.append(row)
    return rows, word_of

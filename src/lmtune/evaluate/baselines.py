"""Zero-shot and few-shot baselines of a run's base model, beside the fine-tuned model.

A fine-tuned accuracy means little without what the base model does untrained:
- encoders (builtin:minilm, BERT-like): mean-pooled, L2-normalised embeddings (what
  sentence-transformers does for all-MiniLM-L6-v2). Zero-shot: cosine similarity to label
  descriptions; few-shot: nearest class centroid of k embedded train rows per class.
- causal LMs: in-context prompting. The prompt (k demonstrations per class, then the row)
  is followed by each label's words; the label whose continuation is most likely wins.
  Scoring is the mean token log-probability by default: a sum favours labels that are
  fewer tokens long, whatever the text says (baselines.scoring: sum is kept for
  single-token label words, where both agree).
Few-shot results depend on which k rows were drawn, so they are repeated over several
seeds and reported as mean and (sample) standard deviation.
"""

from __future__ import annotations

import inspect
import json
import random
import re
import statistics
from pathlib import Path
from typing import Any

import torch

from lmtune.config import BaselinesConfig, Config, ModelConfig
from lmtune.errors import UserError
from lmtune.evaluate.metrics import classification_metrics
from lmtune.losses.logprobs import sequence_logps
from lmtune.tasks import TASKS

Rows = list[dict[str, Any]]
BASELINES_FILE = "baselines.json"


# ----------------------------------------------------------------------------- pure math


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of the token vectors [B, T, H] over positions where mask [B, T] is 1 (padding excluded)."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit length, so dot products are cosine similarities."""
    return torch.nn.functional.normalize(x.float(), p=2, dim=-1)


def class_prototypes(emb: torch.Tensor, classes: list[int], num_classes: int) -> torch.Tensor:
    """Unit-length mean of each class's embeddings [C, H]; a class without rows gets NaN.

    Renormalising matters: argmax of cosine similarity compares prototypes of different
    lengths otherwise (a tight class would have a longer mean and win more often).
    """
    protos = torch.full((num_classes, emb.shape[1]), float("nan"))
    idx = torch.tensor(classes, dtype=torch.long)
    for c in range(num_classes):
        members = emb[idx == c]
        if len(members):
            protos[c] = l2_normalize(l2_normalize(members).mean(0))
    return protos


def nearest_prototype(emb: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
    """Index of the most cosine-similar prototype per row; NaN prototypes never win."""
    sims = l2_normalize(emb) @ protos.T.nan_to_num(0.0)
    sims[:, protos.isnan().any(-1)] = float("-inf")
    return sims.argmax(-1)


def label_scores(sums: torch.Tensor, counts: torch.Tensor, scoring: str) -> torch.Tensor:
    """Per-candidate score from summed log-probabilities and token counts: 'sum' or 'mean'."""
    if scoring == "sum":
        return sums
    if scoring == "mean":
        return sums / counts.clamp_min(1)
    raise ValueError(f"unknown scoring {scoring!r} (use mean or sum)")


def sample_shots(rows: Rows, labels: list[str], k: int, seed: int) -> tuple[Rows, dict[str, int]]:
    """k rows per label drawn with random.Random(seed), in shuffled order, and the labels
    that had fewer than k rows ({label: rows available})."""
    rng = random.Random(seed)
    picked: Rows = []
    short: dict[str, int] = {}
    for label in labels:
        pool = [r for r in rows if r.get("label") == label]
        if len(pool) < k:
            short[label] = len(pool)
        picked += rng.sample(pool, min(k, len(pool)))
    rng.shuffle(picked)  # demonstrations interleave classes instead of arriving in blocks
    return picked, short


def metric_row(
    method: str, k: int, gold: list[int], preds: list[list[int]], labels: list[str]
) -> dict[str, Any]:
    """One baselines.json row: accuracy and macro F1 (mean and sample std over seeds when several)."""
    runs = [classification_metrics(gold, p, labels) for p in preds]
    acc = [r["accuracy"] for r in runs]
    f1 = [r["macro_f1"] for r in runs]
    row: dict[str, Any] = {
        "method": method,
        "k": k,
        "accuracy": statistics.fmean(acc),
        "macro_f1": statistics.fmean(f1),
        "seeds": len(preds),
    }
    if method == "few-shot":
        row.update(
            accuracy_std=statistics.stdev(acc) if len(acc) > 1 else 0.0,
            macro_f1_std=statistics.stdev(f1) if len(f1) > 1 else 0.0,
            accuracy_per_seed=acc,
        )
    return row


# ----------------------------------------------------------------------------- loading


def base_kind(model_config: Any) -> str:
    """'encoder' or 'causal' for a transformers config (same rule as the task check in load.py)."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    mt = getattr(model_config, "model_type", "?")
    if getattr(model_config, "is_encoder_decoder", False):
        raise UserError(f"baselines support encoders and causal LMs, not the encoder-decoder {mt}")
    # BERT-likes are registered as causal LMs too (BertLMHeadModel) but were never trained so.
    encoder = mt in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(
        model_config, "is_decoder", False
    )
    causal = mt in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or "AutoModelForCausalLM" in (
        getattr(model_config, "auto_map", None) or {}
    )
    return "causal" if causal and not encoder else "encoder"


def load_base(meta: dict[str, Any], cfg: Config) -> tuple[torch.nn.Module, Any, str]:
    """The run's base model (not the fine-tune), its tokenizer and kind; safetensors only."""
    from transformers import AutoConfig, AutoModel

    from lmtune.models.load import load_model, load_tokenizer, resolve_model_path

    mcfg = ModelConfig(
        name_or_path=meta["base_model"],
        revision=meta.get("base_revision"),
        trust_remote_code=cfg.model.trust_remote_code,
    )
    path = resolve_model_path(mcfg.name_or_path)
    hub = {} if Path(path).is_dir() or not mcfg.revision else {"revision": mcfg.revision}
    kw = {"trust_remote_code": mcfg.trust_remote_code, **hub}
    tokenizer = load_tokenizer(mcfg, for_training=False)
    try:
        kind = base_kind(AutoConfig.from_pretrained(path, **kw))
        if kind == "causal":
            return load_model(mcfg, "sft", tokenizer).eval(), tokenizer, kind
        model = AutoModel.from_pretrained(path, dtype=torch.float32, use_safetensors=True, **kw)
    except UserError:
        raise
    except Exception as exc:
        raise UserError(
            f"baselines: could not load the base model {meta['base_model']} "
            f"({type(exc).__name__}: {exc}); it must be reachable as when training"
        ) from exc
    return model.eval(), tokenizer, kind


# ----------------------------------------------------------------------------- encoders


@torch.no_grad()
def embed(
    model: torch.nn.Module,
    tokenizer: Any,
    rows: Rows,
    max_length: int,
    batch_size: int,
    device: Any = "cpu",
) -> torch.Tensor:
    """Mean-pooled, L2-normalised embeddings [n, H] of rows' text (and text_pair), in row order."""
    order = sorted(
        range(len(rows)), key=lambda i: len(rows[i]["text"]) + len(rows[i].get("text_pair") or "")
    )
    out = torch.empty(len(rows), model.config.hidden_size)
    for i in range(0, len(order), batch_size):
        idx = order[i : i + batch_size]
        pairs = [rows[j].get("text_pair") for j in idx]
        enc = tokenizer(
            [rows[j]["text"] for j in idx],
            pairs if all(p is not None for p in pairs) else None,
            truncation=True,
            max_length=max_length,
            padding=True,
            return_tensors="pt",
        )
        enc = {k: v.to(device) for k, v in enc.items()}
        hidden = model(**enc).last_hidden_state
        out[idx] = l2_normalize(mean_pool(hidden, enc["attention_mask"])).cpu()
    return out


def label_descriptions(bcfg: BaselinesConfig, labels: list[str]) -> dict[str, list[str]]:
    """Descriptions per label from the config (or the template); UserError on unknown/missing labels."""
    given = bcfg.label_descriptions
    if not given:
        return {lab: [bcfg.description_template.replace("{label}", lab)] for lab in labels}
    _check_keys("baselines.label_descriptions", given, labels, "baselines.description_template")
    out = {lab: [given[lab]] if isinstance(given[lab], str) else list(given[lab]) for lab in labels}
    empty = [lab for lab, d in out.items() if not d or not all(s.strip() for s in d)]
    if empty:
        raise UserError(
            f"baselines.label_descriptions: empty description for label(s) {', '.join(empty)}"
        )
    return out


def check_label_maps(bcfg: BaselinesConfig, labels: list[str]) -> None:
    """UserError when label_descriptions or label_words name other labels than the run's.

    Called before any expensive work (training, evaluation) so a typo costs seconds.
    """
    label_descriptions(bcfg, labels)
    if bcfg.label_words:
        _check_keys("baselines.label_words", bcfg.label_words, labels, "the label names")


def _check_keys(key: str, given: dict[str, Any], labels: list[str], fallback: str) -> None:
    unknown = [k for k in given if k not in labels]
    missing = [lab for lab in labels if lab not in given]
    if unknown or missing:
        raise UserError(
            f"{key} in the run config: "
            + (f"label(s) {', '.join(unknown)} are not labels of this run; " if unknown else "")
            + (f"no entry for label(s) {', '.join(missing)}; " if missing else "")
            + f"give exactly one entry per label ({', '.join(labels)}), or leave it empty to use {fallback}"
        )


def draw_shots(
    train_rows: Rows, labels: list[str], k: int, seed: int, notes: list[str] | None
) -> Rows:
    """k seeded demonstrations per label; a label with fewer rows gets a note (when notes is given)."""
    shots, short = sample_shots(train_rows, labels, k, seed)
    if short and notes is not None:
        notes.append(
            f"few-shot: fewer than {k} training rows for label(s) "
            + ", ".join(f"{lab} ({n})" for lab, n in short.items())
            + "; all of them were used"
        )
    return shots


def encoder_baselines(
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
) -> tuple[list[dict[str, Any]], dict[str, list[str]]]:
    """Zero-shot (label-description similarity) and few-shot (nearest centroid) rows."""
    descs = label_descriptions(bcfg, labels)
    gold = [labels.index(r["label"]) for r in eval_rows]
    x = embed(model, tokenizer, eval_rows, max_length, bcfg.batch_size, device)
    flat = [(i, d) for i, lab in enumerate(labels) for d in descs[lab]]
    d_emb = embed(
        model, tokenizer, [{"text": d} for _, d in flat], max_length, bcfg.batch_size, device
    )
    # Several descriptions of one label average into one prototype, like a centroid.
    zero = nearest_prototype(x, class_prototypes(d_emb, [i for i, _ in flat], len(labels)))
    rows = [metric_row("zero-shot", 0, gold, [zero.tolist()], labels)]
    if train_rows:
        preds = []
        for s in range(bcfg.seeds):
            shots = draw_shots(train_rows, labels, k, seed + s, notes if s == 0 else None)
            s_emb = embed(model, tokenizer, shots, max_length, bcfg.batch_size, device)
            protos = class_prototypes(s_emb, [labels.index(r["label"]) for r in shots], len(labels))
            preds.append(nearest_prototype(x, protos).tolist())
        rows.append(metric_row("few-shot", k, gold, preds, labels))
    return rows, descs


# ----------------------------------------------------------------------------- causal LMs


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


# ----------------------------------------------------------------------------- entry points


def read_train_pool(path: Path, labels: list[str]) -> Rows | None:
    """A run's prepared train split (data/train.jsonl) for drawing shots; None when absent."""
    if not path.is_file():
        return None
    rows = [
        json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
    ]
    return [r for r in rows if isinstance(r, dict) and r.get("text") and r.get("label") in labels]


def run_baselines(
    model_dir: Path,
    cfg: Config,
    eval_rows: Rows,
    finetuned: dict[str, Any],
    out_dir: Path | None,
    train_rows: Rows | None,
    shots: int | None = None,
    device: Any = "cpu",
    data: str | None = None,
) -> dict[str, Any]:
    """Zero-shot, few-shot and fine-tuned rows on eval_rows; writes out_dir/baselines.json.

    model_dir is the saved fine-tuned model (its lmtune_model.json names the base model and
    the labels); finetuned holds its metrics on the same rows; data says what the rows are
    (a file, or a split of the run). Few-shot is skipped, with a note, when there is no
    training pool to draw shots from.
    """
    from lmtune.models.export import read_meta

    meta = read_meta(Path(model_dir))
    if not (meta.get("task") in TASKS and TASKS[meta["task"]].labelled):
        raise UserError(
            f"baselines need a classification model; {model_dir} is a {meta.get('task')} model"
        )
    labels = list(meta["labels"])
    bcfg, k = cfg.baselines, shots or cfg.baselines.shots
    check_label_maps(bcfg, labels)
    if k < 1:
        raise UserError(f"--shots must be at least 1, got {k}")
    notes: list[str] = []
    if not train_rows:
        notes.append(
            "few-shot skipped: no training rows to draw shots from (the run folder has no "
            "data/train.jsonl)"
        )
    model, tokenizer, kind = load_base(meta, cfg)
    model.to(device)
    args = (
        model,
        tokenizer,
        bcfg,
        labels,
        eval_rows,
        train_rows,
        k,
        cfg.run.seed,
        int(meta.get("max_length") or cfg.model.max_length),
        device,
        notes,
    )
    if kind == "encoder":
        rows, descs = encoder_baselines(*args)
        words = None
    else:
        rows, words = causal_baselines(*args)
        descs = None
    rows.append(
        {
            "method": "fine-tuned",
            "k": None,
            "accuracy": float(finetuned["accuracy"]),
            "macro_f1": float(finetuned["macro_f1"]),
        }
    )
    report = {
        "metric": "accuracy",
        "rows": rows,
        "base_model": meta["base_model"],
        "base_kind": kind,
        "data": data,
        "eval_rows": len(eval_rows),
        "label_descriptions": descs,
        "prompt": bcfg.prompt if kind == "causal" else None,
        "label_words": words,
        "scoring": bcfg.scoring if kind == "causal" else "cosine",
        "notes": notes,
    }
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / BASELINES_FILE).write_text(
            json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
    return report


def baselines_table(report: dict[str, Any]) -> Any:
    """A rich table of baselines.json: zero-shot, few-shot and fine-tuned side by side."""
    from rich.table import Table

    table = Table(
        "method",
        "k",
        "accuracy",
        "macro F1",
        "seeds",
        title=f"baselines of {report['base_model']} ({report['base_kind']})",
    )
    for r in report["rows"]:
        std = f" ± {r['accuracy_std']:.4f}" if "accuracy_std" in r else ""
        f1_std = f" ± {r['macro_f1_std']:.4f}" if "macro_f1_std" in r else ""
        table.add_row(
            r["method"],
            "-" if r["k"] is None else str(r["k"]),
            f"{r['accuracy']:.4f}{std}",
            f"{r['macro_f1']:.4f}{f1_std}",
            str(r.get("seeds", "-")),
        )
    return table

"""Extractive question answering (SQuAD v1.1 and v2.0) on an encoder with a span head.

Tokenizing: question + context as a pair, the context cut into windows of model.max_length
tokens that overlap by qa.doc_stride tokens, so one row becomes one feature per window.
Each window's target is the token span of the first gold answer, or the [CLS] position 0
when the question has no answer or the answer is not wholly inside that window (how BERT
was trained on SQuAD). Decoding: per window the qa.n_best best start and end tokens inside
the context, spans of at most qa.max_answer_length tokens, score = start + end logit; the
best span over all windows wins. With no-answer allowed (v2), the question gets "" when
the smallest [CLS] score beats the best span by more than qa.null_threshold.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lmtune.errors import UserError
from lmtune.evaluate.squad import best_null_threshold, gold_answers, score_one, squad_metrics
from lmtune.tasks.base import Task

Offsets = list[tuple[int, int] | None]  # character span of each token; None outside the context


def span_positions(offsets: Offsets, start_char: int, end_char: int) -> tuple[int, int]:
    """Token (start, end) of the answer at characters [start_char, end_char) in one window.

    (0, 0), the [CLS] position, when the answer is not wholly inside the window's context.
    """
    ctx = [t for t, o in enumerate(offsets) if o is not None]
    if not ctx or offsets[ctx[0]][0] > start_char or offsets[ctx[-1]][1] < end_char:  # type: ignore[index]
        return 0, 0
    # The first token that ends after the answer starts, the last that starts before it ends.
    start = next(t for t in ctx if offsets[t][1] > start_char)  # type: ignore[index]
    end = next(t for t in reversed(ctx) if offsets[t][0] < end_char)  # type: ignore[index]
    return (start, end) if end >= start else (0, 0)


def best_span(
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    offsets: Offsets,
    n_best: int,
    max_answer_length: int,
) -> tuple[float, int, int] | None:
    """(score, first char, end char) of the best valid span of one window, or None.

    Valid: start and end tokens inside the context, end >= start, at most max_answer_length
    tokens. Only the n_best highest start and end logits are combined (n_best^2 pairs).
    """
    ctx = np.array([o is not None for o in offsets])
    if not ctx.any():
        return None
    s_logits = np.where(ctx, start_logits[: len(offsets)], -np.inf)
    e_logits = np.where(ctx, end_logits[: len(offsets)], -np.inf)
    k = min(n_best, int(ctx.sum()))
    starts = np.argsort(-s_logits, kind="stable")[:k]
    ends = np.argsort(-e_logits, kind="stable")[:k]
    best = None
    for s in starts.tolist():
        for e in ends.tolist():
            if e < s or e - s + 1 > max_answer_length:
                continue
            score = float(s_logits[s] + e_logits[e])
            if best is None or score > best[0]:
                best = (score, offsets[s][0], offsets[e][1])
    return best


def decode(
    windows: list[tuple[np.ndarray, np.ndarray, Offsets]],
    context: str,
    n_best: int,
    max_answer_length: int,
) -> dict[str, Any]:
    """Best answer of one question over all its windows: text, start, score and null_score.

    null_score is the smallest [CLS] score (start[0] + end[0]) over the windows: the window
    most sure that the answer is somewhere, as in the reference BERT/Hugging Face decoding.
    """
    best, null = None, math.inf
    for start_logits, end_logits, offsets in windows:
        null = min(null, float(start_logits[0] + end_logits[0]))
        cand = best_span(start_logits, end_logits, offsets, n_best, max_answer_length)
        if cand is not None and (best is None or cand[0] > best[0]):
            best = cand
    if best is None:
        return {"text": "", "start": -1, "score": -math.inf, "null_score": null}
    score, a, b = best
    return {"text": context[a:b], "start": a, "score": score, "null_score": null}


class QATask(Task):
    """Span extraction: cross-entropy on start and end positions; SQuAD EM/F1."""

    name = "qa"

    def __init__(self, tokenizer: Any, cfg: Any) -> None:
        if not getattr(tokenizer, "is_fast", False):
            raise UserError(
                "task qa needs a fast (Rust) tokenizer, which reports the character "
                "span of every token; this model's tokenizer is a slow one"
            )
        self.tokenizer = tokenizer
        self.max_length = cfg.model.max_length
        q = cfg.qa
        self.doc_stride, self.n_best = q.doc_stride, q.n_best
        self.max_answer_length, self.null_threshold = q.max_answer_length, q.null_threshold
        self.allow_no_answer: bool | None = q.allow_no_answer

    # ---- hooks used by train/run.py -----------------------------------------------------

    def observe_train(self, rows: list[dict[str, Any]]) -> None:
        """Resolve allow_no_answer=None: SQuAD v2 behaviour when training has unanswerables."""
        if self.allow_no_answer is None:
            self.allow_no_answer = any(r.get("is_impossible") for r in rows)

    def model_meta(self) -> dict[str, Any]:
        """Decoding settings saved with the model, so eval/predict decode as training did."""
        return {
            "qa": {
                "doc_stride": self.doc_stride,
                "max_answer_length": self.max_answer_length,
                "n_best": self.n_best,
                "null_threshold": self.null_threshold,
                "allow_no_answer": self.allow_no_answer,
            }
        }

    # ---- features -----------------------------------------------------------------------

    def windows(self, question: str, context: str) -> list[dict[str, Any]]:
        """Token windows of (question, context) with each token's character span in the context."""
        tok = self.tokenizer
        q_len = len(tok(question, add_special_tokens=False)["input_ids"])
        room = self.max_length - q_len - tok.num_special_tokens_to_add(pair=True)
        if room <= self.doc_stride:
            # The tokenizer cannot step through the context without new tokens per window.
            raise ValueError(
                f"the question has {q_len} tokens, leaving {room} context tokens per "
                f"window, not more than qa.doc_stride={self.doc_stride}; raise "
                "model.max_length, lower qa.doc_stride or shorten the question"
            )
        enc = tok(
            question,
            context,
            truncation="only_second",
            max_length=self.max_length,
            stride=self.doc_stride,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
        )
        out = []
        for w in range(len(enc["input_ids"])):
            seq = enc.sequence_ids(w)
            feat: dict[str, Any] = {
                k: list(enc[k][w])
                for k in ("input_ids", "attention_mask", "token_type_ids")
                if k in enc
            }
            feat["offsets"] = [
                tuple(o) if seq[t] == 1 else None for t, o in enumerate(enc["offset_mapping"][w])
            ]
            feat["length"] = len(feat["input_ids"])
            out.append(feat)
        return out

    def encode(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        """One feature per window; with gold answers each gets start/end token targets."""
        feats = self.windows(row["question"], row["context"])
        answers = row.get("answers")
        if answers is not None:
            span = None
            if answers["text"]:  # the first gold answer is the training target (as in SQuAD)
                a = answers["answer_start"][0]
                span = (a, a + len(answers["text"][0]))
            for f in feats:
                f["start"], f["end"] = span_positions(f["offsets"], *span) if span else (0, 0)
        return feats

    def collate(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Dynamic padding; a window is one loss unit."""
        from lmtune.data.collate import pad_batch

        batch: dict[str, Any] = pad_batch(
            features,
            self.tokenizer.pad_token_id,
            keys=("input_ids", "attention_mask", "token_type_ids"),
        )
        if all("start" in f for f in features):
            batch["start_positions"] = torch.tensor(
                [f["start"] for f in features], dtype=torch.long
            )
            batch["end_positions"] = torch.tensor([f["end"] for f in features], dtype=torch.long)
        batch["num_examples"] = len(features)
        batch["num_tokens"] = int(batch["attention_mask"].sum())
        batch["num_units"] = float(len(features))
        return batch

    def logits(
        self, model: torch.nn.Module, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Start and end logits [batch, tokens], padding masked out (so padding never matters)."""
        inputs = {
            k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch
        }
        out = model(**inputs)
        pad = batch["attention_mask"] == 0
        low = torch.finfo(torch.float32).min
        return out.start_logits.float().masked_fill(pad, low), out.end_logits.float().masked_fill(
            pad, low
        )

    def loss(
        self, model: torch.nn.Module, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed mean of start and end cross-entropy over windows, and the window count."""
        start, end = self.logits(model, batch)
        loss = (
            F.cross_entropy(start, batch["start_positions"], reduction="sum")
            + F.cross_entropy(end, batch["end_positions"], reduction="sum")
        ) / 2
        return loss, torch.tensor(float(batch["num_units"]))

    # ---- inference ----------------------------------------------------------------------

    @torch.no_grad()
    def _decode_rows(
        self, model: torch.nn.Module, rows: list[dict[str, Any]], batch_size: int
    ) -> tuple[list[dict[str, Any]], float, int]:
        """Decoded answers per row, plus the summed loss and window count (rows with answers)."""
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        feats: list[dict[str, Any]] = []
        owner: list[int] = []
        decoded: list[dict[str, Any] | None] = []
        for i, r in enumerate(rows):
            try:
                fs = self.encode(r)
            except ValueError as exc:  # counted as a wrong answer below, never dropped silently
                decoded.append(
                    {
                        "text": "",
                        "start": -1,
                        "score": -math.inf,
                        "null_score": math.inf,
                        "error": str(exc),
                    }
                )
                continue
            decoded.append(None)
            feats += fs
            owner += [i] * len(fs)
        per_row: list[list[Any]] = [[] for _ in rows]
        loss_sum, n_loss = 0.0, 0
        order = sorted(range(len(feats)), key=lambda j: feats[j]["length"])  # less padding
        for b in range(0, len(order), batch_size):
            idx = order[b : b + batch_size]
            batch = self.collate([feats[j] for j in idx])
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
            start, end = self.logits(model, batch)
            if "start_positions" in batch:
                loss_sum += float(
                    (
                        F.cross_entropy(start, batch["start_positions"], reduction="sum")
                        + F.cross_entropy(end, batch["end_positions"], reduction="sum")
                    )
                    / 2
                )
                n_loss += len(idx)
            start_np, end_np = start.cpu().numpy(), end.cpu().numpy()
            for k, j in enumerate(idx):
                n = feats[j]["length"]
                per_row[owner[j]].append((start_np[k, :n], end_np[k, :n], feats[j]["offsets"]))
        model.train(was_training)
        for i, r in enumerate(rows):
            if decoded[i] is None:
                decoded[i] = decode(per_row[i], r["context"], self.n_best, self.max_answer_length)
        return [d for d in decoded if d is not None], loss_sum, n_loss

    def _final(self, d: dict[str, Any], allow_no_answer: bool) -> str:
        if allow_no_answer and d["null_score"] - d["score"] > self.null_threshold:
            return ""
        return d["text"]

    def answer(
        self, model: torch.nn.Module, rows: list[dict[str, Any]], batch_size: int
    ) -> list[dict[str, Any]]:
        """Answers for rows (answers not needed): id, question, answer ("" = no answer), scores."""
        decoded, _, _ = self._decode_rows(model, rows, batch_size)
        allow = bool(self.allow_no_answer)
        out = []
        for r, d in zip(rows, decoded, strict=True):
            text = self._final(d, allow)
            out.append(
                {
                    **({"id": r["id"]} if "id" in r else {}),
                    "question": r["question"],
                    "answer": text,
                    "answer_start": d["start"] if text else -1,
                    "score": _num(d["score"]),
                    "null_score": _num(d["null_score"]),
                }
            )
        return out

    def predict_rows(
        self, model: torch.nn.Module, rows: list[dict[str, Any]], batch_size: int
    ) -> list[dict[str, Any]]:
        """`lmtune predict`: the answers (see answer)."""
        return self.answer(model, rows, batch_size)

    def evaluate(
        self,
        model: torch.nn.Module,
        rows: list[dict[str, Any]],
        batch_size: int,
        out_dir: Path | None = None,
    ) -> dict[str, Any]:
        """eval_loss, SQuAD exact/f1 (HasAns/NoAns split and best_f1_thresh with unanswerable
        questions); writes predictions.json (id -> answer) and errors.jsonl to out_dir."""
        decoded, loss_sum, n_loss = self._decode_rows(model, rows, batch_size)
        allow = self.allow_no_answer
        if allow is None:  # not resolved from training data: behave as the data is (v1 / v2)
            allow = any(r.get("is_impossible") for r in rows)
        preds = [self._final(d, allow) for d in decoded]
        golds = [r["answers"]["text"] for r in rows]
        metrics: dict[str, Any] = {
            "eval_loss": loss_sum / n_loss if n_loss else float("nan"),
            **squad_metrics(preds, golds),
        }
        if allow:
            margins = [min(d["null_score"] - d["score"], 1e9) for d in decoded]
            span_f1 = [score_one(d["text"], g)[1] for d, g in zip(decoded, golds, strict=True)]
            has_answer = [gold_answers(g) != [""] for g in golds]
            thr, best = best_null_threshold(margins, span_f1, has_answer)
            metrics.update(best_f1=best, best_f1_thresh=thr)
        metrics.update(
            eval_examples=float(len(rows)),
            eval_windows=float(n_loss),
            unencodable=float(sum("error" in d for d in decoded)),
        )
        if out_dir is not None:
            _write_details(Path(out_dir), rows, decoded, preds)
        return metrics


def _num(x: float) -> float | None:
    return round(x, 4) if math.isfinite(x) else None


def _write_details(
    out_dir: Path, rows: list[dict[str, Any]], decoded: list[dict[str, Any]], preds: list[str]
) -> None:
    """predictions.json (the official SQuAD prediction format) and errors.jsonl, worst first."""
    out_dir.mkdir(parents=True, exist_ok=True)
    keys = [r.get("id") or r.get("_source") or str(i) for i, r in enumerate(rows)]
    (out_dir / "predictions.json").write_text(
        json.dumps(dict(zip(keys, preds, strict=True)), indent=1, ensure_ascii=False),
        encoding="utf-8",
    )
    errors = []
    for key, r, d, p in zip(keys, rows, decoded, preds, strict=True):
        exact, f1 = score_one(p, r["answers"]["text"])
        if exact < 1:
            errors.append(
                {
                    "id": key,
                    "source": r.get("_source"),
                    "title": r.get("title"),
                    "question": r["question"],
                    "gold": r["answers"]["text"],
                    "predicted": p,
                    "f1": round(f1, 4),
                    "score": _num(d["score"]),
                    "null_score": _num(d["null_score"]),
                    **({"error": d["error"]} if "error" in d else {}),
                    "context": r["context"],
                }
            )
    # Worst first: lowest F1, and among equals the most confident prediction (the ones to read).
    errors.sort(key=lambda e: (e["f1"], -(e["score"] if e["score"] is not None else -1e9)))
    with (out_dir / "errors.jsonl").open("w", encoding="utf-8") as f:
        for e in errors:
            f.write(json.dumps(e, ensure_ascii=False) + "\n")

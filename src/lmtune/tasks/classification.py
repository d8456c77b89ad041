"""Sequence classification: single texts or text pairs, any number of string labels."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lmtune.evaluate.calibration import expected_calibration_error
from lmtune.evaluate.metrics import classification_metrics
from lmtune.tasks.base import Task, TaskInputs


class ClassificationTask(Task):
    """Cross-entropy on a classification head; metrics from evaluate/metrics.py."""

    shards_eval = True  # eval_partial/eval_merge: exact over processes

    name = "classification"

    def __init__(
        self,
        tokenizer: Any,
        labels: list[str],
        max_length: int,
        label_weights: list[float] | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.labels = list(labels)
        self.label2id = {label: i for i, label in enumerate(self.labels)}
        self.max_length = max_length
        self.weights = torch.tensor(label_weights, dtype=torch.float32) if label_weights else None

    @classmethod
    def from_config(cls, tokenizer: Any, cfg: Any, inputs: TaskInputs) -> ClassificationTask:
        """Labels (and their loss weights) come from data preparation or the saved model."""
        return cls(tokenizer, inputs.labels or [], cfg.model.max_length, inputs.label_weights)

    def encode(self, row: dict[str, Any]) -> dict[str, Any]:
        """Tokenize text (and text_pair); unlabeled rows (prediction) get label -1."""
        enc = self.tokenizer(
            row["text"], row.get("text_pair"), truncation=True, max_length=self.max_length
        )
        feat: dict[str, Any] = {
            k: list(enc[k]) for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc
        }
        feat["label"] = (
            self.label2id[row["label"]] if "label" in row and row["label"] is not None else -1
        )
        feat["length"] = len(feat["input_ids"])
        return feat

    def collate(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Dynamic padding to the longest example in the batch."""
        from lmtune.data.collate import pad_batch

        batch: dict[str, Any] = pad_batch(
            features,
            self.tokenizer.pad_token_id,
            keys=("input_ids", "attention_mask", "token_type_ids"),
        )
        batch["labels"] = torch.tensor([f["label"] for f in features], dtype=torch.long)
        batch["num_examples"] = len(features)
        batch["num_tokens"] = int(batch["attention_mask"].sum())
        w = self._unit_weights(batch["labels"])
        batch["num_units"] = float(w.sum())
        return batch

    def _unit_weights(self, labels: torch.Tensor) -> torch.Tensor:
        # With class weights the loss is a weighted mean, so the units are the summed weights.
        if self.weights is None:
            return torch.ones(len(labels))
        return self.weights[labels.clamp(min=0)]

    def logits(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Classifier logits for a batch."""
        inputs = {
            k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch
        }
        return model(**inputs).logits

    def loss(
        self, model: torch.nn.Module, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed (optionally class-weighted) cross-entropy and its units."""
        logits = self.logits(model, batch).float()
        w = self.weights.to(logits.device) if self.weights is not None else None
        loss = F.cross_entropy(logits, batch["labels"], weight=w, reduction="sum")
        return loss, torch.tensor(float(batch["num_units"]))

    @torch.no_grad()
    def predict(
        self, model: torch.nn.Module, rows: list[dict[str, Any]], batch_size: int
    ) -> torch.Tensor:
        """Class probabilities [n, num_labels] for rows, batched in length order to cut padding."""
        device = next(model.parameters()).device
        feats = [self.encode({**r, "label": None}) for r in rows]
        order = sorted(range(len(feats)), key=lambda i: feats[i]["length"])
        probs = torch.empty(len(rows), len(self.labels))
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            batch = self.collate([feats[j] for j in idx])
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
            probs[idx] = self.logits(model, batch).float().softmax(-1).cpu()
        return probs

    def predict_rows(
        self, model: torch.nn.Module, rows: list[dict[str, Any]], batch_size: int
    ) -> list[dict[str, Any]]:
        """Per row: its text(s), the top label, its confidence and every label's probability."""
        probs = self.predict(model, rows, batch_size)
        out = []
        for r, p in zip(rows, probs, strict=True):
            top = int(p.argmax())
            out.append(
                {
                    "text": r["text"],
                    **({"text_pair": r["text_pair"]} if "text_pair" in r else {}),
                    "label": self.labels[top],
                    "confidence": round(float(p[top]), 4),
                    "scores": {
                        lab: round(float(s), 4)
                        for lab, s in zip(self.labels, p.tolist(), strict=True)
                    },
                }
            )
        return out

    def evaluate(
        self,
        model: torch.nn.Module,
        rows: list[dict[str, Any]],
        batch_size: int,
        out_dir: Path | None = None,
    ) -> dict[str, Any]:
        """Loss, accuracy, precision/recall/F1, ECE; writes errors.jsonl and predictions.jsonl
        to out_dir when given."""
        return self._metrics(rows, self.eval_partial(model, rows, batch_size), out_dir)

    def eval_partial(
        self, model: torch.nn.Module, rows: list[dict[str, Any]], batch_size: int
    ) -> torch.Tensor:
        """Class probabilities of a share of the rows (runtime/sharded_eval.py gathers them)."""
        was_training = model.training
        model.eval()
        probs = self.predict(model, rows, batch_size)
        model.train(was_training)
        return probs

    def eval_merge(self, parts: list[torch.Tensor], rows: list[dict[str, Any]]) -> dict[str, Any]:
        """The metrics of every process's probabilities, concatenated in row order."""
        return self._metrics(rows, torch.cat(parts), None)

    def _metrics(
        self, rows: list[dict[str, Any]], probs: torch.Tensor, out_dir: Path | None
    ) -> dict[str, Any]:
        gold = torch.tensor([self.label2id[r["label"]] for r in rows])
        pred = probs.argmax(-1)
        nll = F.nll_loss(probs.clamp_min(1e-12).log(), gold, reduction="mean")
        metrics = classification_metrics(gold.tolist(), pred.tolist(), self.labels)
        details = metrics.pop("details")
        conf = probs.gather(1, pred[:, None])[:, 0]
        ece = expected_calibration_error(conf.tolist(), (pred == gold).tolist())
        metrics = {
            "eval_loss": float(nll),
            **metrics,
            "ece": ece,
            "eval_examples": float(len(rows)),
        }
        if out_dir is not None:
            # Every prediction with its probabilities: the report's reliability diagram reads it.
            with (out_dir / "predictions.jsonl").open("w", encoding="utf-8") as f:
                for i, r in enumerate(rows):
                    f.write(
                        json.dumps(
                            {
                                "source": r.get("_source"),
                                "text": r["text"],
                                **({"text_pair": r["text_pair"]} if "text_pair" in r else {}),
                                "label": r["label"],
                                "pred": self.labels[int(pred[i])],
                                "prob": round(float(conf[i]), 6),
                                "probs": {
                                    lab: round(float(p), 6)
                                    for lab, p in zip(self.labels, probs[i].tolist(), strict=True)
                                },
                            },
                            ensure_ascii=False,
                        )
                        + "\n"
                    )
            errors = [
                {
                    "source": r.get("_source"),
                    "text": r["text"],
                    **({"text_pair": r["text_pair"]} if "text_pair" in r else {}),
                    "gold": r["label"],
                    "predicted": self.labels[int(p)],
                    "confidence": round(float(probs[i, p]), 4),
                }
                for i, (r, p) in enumerate(zip(rows, pred.tolist(), strict=True))
                if p != int(gold[i])
            ]
            errors.sort(
                key=lambda e: -e["confidence"]
            )  # confident mistakes first: the ones to read
            with (out_dir / "errors.jsonl").open("w", encoding="utf-8") as f:
                for e in errors:
                    f.write(json.dumps(e, ensure_ascii=False) + "\n")
        metrics["details"] = details
        return metrics

"""`lmtune score`: a reward model's scores for the rows of a file (reward sources: tasks/rewards.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lmtune.errors import UserError
from lmtune.tasks.rewards import (  # noqa: F401 - importable from here as before
    FunctionReward,
    RewardModel,
    RewardSource,
    encode_response,
    load_reward,
)

# ---- lmtune score ---------------------------------------------------------------------------


def _score_rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line, row) of every row; UserError listing the rows that have nothing to score."""
    from lmtune.data.formats import RowError, parse_messages
    from lmtune.data.io import read_file

    if not path.exists():
        raise UserError(f"--input {path} does not exist")
    records = read_file(str(path))
    rows, problems = [], []
    for rec in records:
        row = rec.data
        try:
            if row is None:
                raise RowError(rec.error or "unreadable row")
            prompt = row.get("prompt")
            if isinstance(prompt, list):
                row["prompt"] = parse_messages(prompt, "prompt")
            elif not isinstance(prompt, str):
                raise RowError("needs a 'prompt' (text or a list of messages)")
            keys = ("response",) if "response" in row else ("chosen", "rejected")
            for k in keys:
                if not isinstance(row.get(k), str):
                    raise RowError(
                        f"'{k}' must be a string (rows hold prompt + response, or "
                        "prompt + chosen + rejected)"
                    )
        except RowError as exc:
            problems.append(f"line {rec.line}: {exc.reason}")
            continue
        rows.append((rec.line, row))
    if problems:
        shown = "; ".join(problems[:5])
        raise UserError(f"{path}: {len(problems)} row(s) cannot be scored: {shown}")
    if not rows:
        raise UserError(f"{path}: no rows to score")
    return rows


def run_score(
    model_path: str | Path,
    input_path: str | Path,
    out_path: str | Path | None = None,
    batch_size: int = 32,
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Score every row of a file with a reward model: prompt + response rows get `score`,
    prompt + chosen + rejected rows get score_chosen, score_rejected and margin (chosen minus
    rejected). Writes jsonl to out_path when given; returns (rows, summary)."""
    rows = _score_rows(Path(input_path))
    scorer = RewardModel(model_path, batch_size, where="score")
    prompts, responses, slots = [], [], []
    for i, (_, row) in enumerate(rows):
        for key in ("response",) if "response" in row else ("chosen", "rejected"):
            prompts.append(row["prompt"])
            responses.append(row[key])
            slots.append((i, key))
    scores = scorer(prompts, responses)
    out = [dict(row) for _, row in rows]
    for (i, key), s in zip(slots, scores, strict=True):
        out[i]["score" if key == "response" else f"score_{key}"] = round(s, 6)
    margins = []
    for row in out:
        if "score_chosen" in row:
            row["margin"] = round(row["score_chosen"] - row["score_rejected"], 6)
            margins.append(row["margin"])
    summary: dict[str, float] = {"rows": float(len(out)), "mean_score": sum(scores) / len(scores)}
    if margins:
        summary.update(
            pairs=float(len(margins)),
            mean_margin=sum(margins) / len(margins),
            pairwise_accuracy=sum(m > 0 for m in margins) / len(margins),
        )
    if out_path is not None:
        Path(out_path).parent.mkdir(parents=True, exist_ok=True)
        with Path(out_path).open("w", encoding="utf-8") as f:
            for row in out:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return out, summary

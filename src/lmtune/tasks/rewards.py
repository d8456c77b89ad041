"""Reward sources for (prompt, response) pairs: task rlhf trains on them, `lmtune score` runs them.

Two reward sources share one call shape, `source(prompts, responses) -> list[float]`:
- a trained reward model (a `task: reward` run or model folder), which reads the pair the way
  it was trained (tasks/reward.py: text pair for encoders, prompt + response + EOS for causal
  LMs, same cleaning); a pair too long for it keeps the END of the prompt and the START of
  the response (training rejects such rows instead; here every row gets a score);
- a Python function `module:function`, called as f(prompt, response) -> number, imported from
  the current directory or PYTHONPATH (so `examples.rewards:vowel_share` works from the repo).
"""

from __future__ import annotations

import importlib
import json
import math
import numbers
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from lmtune.errors import UserError
from lmtune.tasks.pairs import keep_end

Prompt = str | list[dict[str, str]]
RewardSource = Callable[[list[Prompt], list[str]], list[float]]


def _preview(prompt: Prompt, n: int = 60) -> str:
    text = prompt if isinstance(prompt, str) else json.dumps(prompt, ensure_ascii=False)
    return repr(text[:n] + ("..." if len(text) > n else ""))


class FunctionReward:
    """A reward function given as module:function, checked on import and on every call."""

    def __init__(self, spec: str, where: str = "rlhf.reward") -> None:
        module_name, _, func_name = spec.partition(":")
        if not module_name or not func_name:
            raise UserError(
                f"{where} {spec!r}: a reward function is module:function "
                "(e.g. examples.rewards:vowel_share)"
            )
        self.spec, self.where = spec, where
        cwd = os.getcwd()
        if cwd not in sys.path and "" not in sys.path:
            sys.path.insert(0, cwd)  # console scripts leave the current directory out
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and (module_name + ".").startswith(exc.name + "."):
                raise UserError(
                    f"{where} {spec!r}: no module {module_name!r} in the current directory "
                    f"({cwd}) or on PYTHONPATH; run from the folder that holds it or add that "
                    "folder to PYTHONPATH"
                ) from None
            raise UserError(f"{where} {spec!r}: importing {module_name} failed: {exc}") from None
        except Exception as exc:  # the user's module raised while importing
            raise UserError(
                f"{where} {spec!r}: importing {module_name} raised {type(exc).__name__}: {exc}"
            ) from None
        fn = getattr(module, func_name, None)
        if not callable(fn):
            names = sorted(
                n
                for n, v in vars(module).items()
                if callable(v)
                and not n.startswith("_")
                and getattr(v, "__module__", None) == module.__name__
            )
            what = "has no" if fn is None else "has a non-callable"
            raise UserError(
                f"{where} {spec!r}: module {module_name} ({getattr(module, '__file__', '?')}) "
                f"{what} {func_name!r}; its functions: {', '.join(names) or '(none)'}"
            )
        self.fn = fn

    def __call__(self, prompts: list[Prompt], responses: list[str]) -> list[float]:
        """The function's value for every pair; UserError when it raises or is not a number."""
        out = []
        for prompt, response in zip(prompts, responses, strict=True):
            try:
                value = self.fn(prompt, response)
            except Exception as exc:
                raise UserError(
                    f"reward function {self.spec} ({self.where}) raised {type(exc).__name__}: "
                    f"{exc} on prompt {_preview(prompt)}, response {_preview(response)}"
                ) from exc
            if not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
                raise UserError(
                    f"reward function {self.spec} ({self.where}) returned {value!r} "
                    f"({type(value).__name__}) on prompt {_preview(prompt)}: it must return a "
                    "finite number (int or float)"
                )
            out.append(float(value))
        return out


def _fit_one(
    prompt: list[int],
    response: list[int],
    max_length: int,
    max_prompt: int | None,
    keep_first: int,
    reserved: int,
) -> tuple[list[int], list[int]]:
    """Prompt keeps its end, response its start; when both do not fit, the prompt keeps at
    least half of the room so the response is always read."""
    if max_prompt is not None:
        prompt = keep_end(prompt, max_prompt, keep_first)
    budget = max_length - reserved
    if len(prompt) + len(response) > budget and len(prompt) > budget // 2:
        prompt = keep_end(prompt, max(budget - len(response), budget // 2), keep_first)
    return prompt, response[: budget - len(prompt)]


def encode_response(task: Any, prompt: Prompt, response: str) -> dict[str, list[int]]:
    """input_ids (+ token_type_ids) of one (prompt, response) for a RewardTask, tokenized like
    its training pairs (RewardTask.encode; tests check they agree)."""
    tok = task.tokenizer
    if task.text_pair:
        from lmtune.data.templates import render_prompt

        if isinstance(prompt, list):
            prompt = render_prompt(prompt, "chat", tok, task.template)
        p, r = (
            task.backend.encode(prompt, add_special_tokens=False),
            task.backend.encode(response, add_special_tokens=False),
        )
        pids, rids = _fit_one(
            p.ids,
            r.ids,
            task.max_length,
            task.max_prompt_length,
            0,
            tok.num_special_tokens_to_add(pair=True),
        )
        if len(pids) < len(p.ids):
            p.truncate(len(pids), direction="left")
        if len(rids) < len(r.ids):
            r.truncate(len(rids))
        full = task.backend.post_process(p, r, add_special_tokens=True)
        feat = {"input_ids": list(full.ids)}
        if task.type_ids:
            feat["token_type_ids"] = list(full.type_ids)
        return feat
    pids, rids, _ = task.causal.prompt_and_responses(
        {"prompt": prompt, "chosen": response, "rejected": response}
    )
    bos = tok.bos_token_id
    keep_first = 1 if bos is not None and pids[:1] == [bos] else 0
    pids, rids = _fit_one(pids, rids, task.max_length, task.max_prompt_length, keep_first, 0)
    return {"input_ids": pids + rids}


class RewardModel:
    """A trained reward model as a reward source (scores in batches, in length order)."""

    def __init__(self, path: str | Path, batch_size: int = 32, where: str = "rlhf.reward") -> None:
        from lmtune.models.saved import load_for_inference
        from lmtune.runtime.dist import Dist
        from lmtune.tasks import spec
        from lmtune.tasks.reward import RewardTask

        model, tokenizer, meta, cfg = load_for_inference(path)
        if spec(meta["task"]).model != "reward":
            raise UserError(
                f"{where} {path}: a {meta['task']} model, not a reward model "
                "(train one with task: reward)"
            )
        self.device = Dist.get().device
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.task = RewardTask(tokenizer, cfg)
        self.clean_cfg = cfg.data.clean
        self.batch_size = batch_size

    def _clean(self, text: str) -> str:
        # The cleaning training applied (control characters, normalisation), never redaction.
        from lmtune.data.clean import normalize_text, remove_control

        if self.clean_cfg.control_chars:
            text = remove_control(text)
        return normalize_text(text) if self.clean_cfg.normalize else text

    def _text(self, value: Prompt) -> Prompt:
        if isinstance(value, list):
            return [{**m, "content": self._clean(m["content"])} for m in value]
        return self._clean(value)

    @torch.no_grad()
    def __call__(self, prompts: list[Prompt], responses: list[str]) -> list[float]:
        """The reward of every (prompt, response)."""
        from lmtune.data.collate import pad_batch
        from lmtune.tasks.pairs import to_device

        feats = [
            encode_response(self.task, self._text(p), self._clean(r))
            for p, r in zip(prompts, responses, strict=True)
        ]
        order = sorted(range(len(feats)), key=lambda i: len(feats[i]["input_ids"]))
        scores = [0.0] * len(feats)
        pad = self.task.tokenizer.pad_token_id
        for i in range(0, len(order), self.batch_size):
            idx = order[i : i + self.batch_size]
            batch = pad_batch([feats[j] for j in idx], pad, keys=("input_ids", "token_type_ids"))
            values = self.task.rewards(self.model, to_device(batch, self.device)).tolist()
            for j, v in zip(idx, values, strict=True):
                scores[j] = v
        return scores


def load_reward(spec: str, batch_size: int = 32, where: str = "rlhf.reward") -> RewardSource:
    """A reward source from a folder (reward model) or module:function (Python function)."""
    if Path(spec).expanduser().exists():
        return RewardModel(Path(spec).expanduser(), batch_size, where)
    if ":" in spec:
        return FunctionReward(spec, where)
    raise UserError(
        f"{where} {spec!r}: no folder at that path, and not module:function; give a "
        "reward-model run folder or a Python function such as "
        "examples.rewards:vowel_share"
    )

"""`lmtune feedback`: collect human preferences in the terminal.

For each prompt the tool samples completions from a model, shows two different ones (A and
B), asks a / b / t(ie) / s(kip) / q(uit), then an optional note, and appends one row
{prompt, response_a, response_b, preference, note, model, time} to the output file after
EVERY answer, flushed and fsynced, so a crash or Ctrl-C loses nothing. Skips are recorded
too (preference "skip"), so a second session resumes where the first stopped: prompts
already answered or skipped in the file are not shown again (a prompt listed twice is shown
twice). The file is directly trainable: `task: reward` with `data.format: pairwise` (ties and
skips are dropped by the data pipeline, each with its reason). Samples are seeded per prompt
(--seed plus the prompt's position), so a resumed session shows what the first would have.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

import torch

from lmtune.errors import UserError
from lmtune.tasks import causal_tasks, spec
from lmtune.tasks.rollout import Prompt, encode_prompt_ids, sample

KEYS = {
    "a": "a",
    "b": "b",
    "t": "tie",
    "tie": "tie",
    "s": "skip",
    "skip": "skip",
    "q": "quit",
    "quit": "quit",
}


def load_policy(path: str) -> tuple[torch.nn.Module, Any, str]:
    """(model, tokenizer, template) from an lmtune run/model folder, or any causal LM folder
    or hub id (then the tokenizer's chat template or the built-in ones apply)."""
    from lmtune.config import ModelConfig
    from lmtune.evaluate.run import load_for_inference, resolve_model_dir
    from lmtune.models.load import load_model, load_tokenizer

    try:
        resolve_model_dir(path)
    except UserError:  # not written by lmtune: a plain model folder or a hub id
        mcfg = ModelConfig(name_or_path=path)
        tokenizer = load_tokenizer(mcfg, for_training=False)
        return load_model(mcfg, "sft", tokenizer).eval(), tokenizer, "auto"
    model, tokenizer, meta, _ = load_for_inference(path)
    if not spec(meta["task"]).generates:
        raise UserError(
            f"--model {path} is a {meta['task']} model, which cannot write "
            f"completions; give a causal LM (task {', '.join(causal_tasks())})"
        )
    return model, tokenizer, meta.get("template", "auto")


def read_prompts(path: Path) -> list[Prompt]:
    """Prompts from .txt (one per line) or jsonl/json/csv rows with 'prompt' (text or a list
    of messages) or 'text'; UserError naming the lines without one."""
    from lmtune.data.formats import RowError, parse_messages
    from lmtune.data.io import read_file

    if not path.is_file():
        raise UserError(f"--prompts {path} does not exist")
    prompts: list[Prompt] = []
    problems = []
    for rec in read_file(str(path)):
        value = (rec.data or {}).get("prompt", (rec.data or {}).get("text"))
        try:
            if isinstance(value, list):
                value = parse_messages(value, "prompt")
            elif not isinstance(value, str) or not value.strip():
                raise RowError(rec.error or "no 'prompt' (text or messages) or 'text' field")
        except RowError as exc:
            problems.append(f"line {rec.line}: {exc.reason}")
            continue
        prompts.append(value)
    if problems:
        shown = "; ".join(problems[:5])
        raise UserError(f"{path}: {len(problems)} row(s) without a prompt: {shown}")
    if not prompts:
        raise UserError(f"{path}: no prompts found")
    return prompts


def prompt_key(prompt: Prompt) -> str:
    """What identifies a prompt across sessions (messages compare by role and content)."""
    return json.dumps(prompt, sort_keys=True, ensure_ascii=False)


def read_answered(out: Path) -> tuple[Counter[str], Counter[str]]:
    """(answers per prompt key, answers per preference) already in out. A last line cut off
    mid-write (a crash before its newline) is removed; other unreadable lines are errors."""
    per_prompt: Counter[str] = Counter()
    per_choice: Counter[str] = Counter()
    if not out.is_file():
        return per_prompt, per_choice
    data = out.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        try:
            json.loads(data[cut:])
            with out.open("ab") as f:  # a complete row that lacks only its newline
                f.write(b"\n")
        except json.JSONDecodeError:
            print(f"{out}: removing an incomplete last line (an interrupted write)", flush=True)
            with out.open("r+b") as f:
                f.truncate(cut)
            data = data[:cut]
    for n, line in enumerate(data.decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            per_prompt[prompt_key(row["prompt"])] += 1
            per_choice[row["preference"]] += 1
        except (json.JSONDecodeError, KeyError, TypeError):
            raise UserError(
                f"{out} line {n} is not a feedback row (JSON with prompt and "
                "preference); fix or remove it, or pick another --out"
            ) from None
    return per_prompt, per_choice


def _show_prompt(prompt: Prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"[{m['role']}] {m['content']}" for m in prompt)


class Session:
    """One terminal session: reads answers from stdin, writes rows to out."""

    def __init__(self, out: Path, model_name: str, stdin: IO[str], stdout: IO[str]) -> None:
        self.out, self.model_name, self.stdin, self.stdout = out, model_name, stdin, stdout
        self.counts: Counter[str] = Counter()
        self.eof = False

    def say(self, text: str = "", end: str = "\n") -> None:
        """Print to the session's output now (answers may be piped in)."""
        self.stdout.write(text + end)
        self.stdout.flush()

    def ask(self, question: str) -> str | None:
        """One line of input, stripped; None at end of input."""
        self.say(question, end="")
        line = self.stdin.readline()
        if not line:
            self.eof = True
            self.say()
            return None
        return line.strip()

    def choose(self) -> str | None:
        """a, b, tie, skip or quit; invalid answers ask again; None at end of input."""
        while True:
            answer = self.ask("Which is better? [a] / [b] / [t]ie / [s]kip / [q]uit: ")
            if answer is None:
                return None
            if answer.lower() in KEYS:
                return KEYS[answer.lower()]
            self.say(f"  '{answer}' is not one of a, b, t, s, q")

    def record(self, prompt: Prompt, a: str, b: str, preference: str, note: str) -> None:
        """Append one row and make it durable before the next question."""
        row = {
            "prompt": prompt,
            "response_a": a,
            "response_b": b,
            "preference": preference,
            "note": note,
            "model": self.model_name,
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        with self.out.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.counts[preference] += 1


def run_feedback(
    model_path: str,
    prompts_path: str | Path,
    out_path: str | Path,
    samples_per_prompt: int = 2,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    stdin: IO[str] | None = None,
    stdout: IO[str] | None = None,
) -> dict[str, Any]:
    """Run the terminal session; returns {this session's counts, file totals, path}."""
    if samples_per_prompt < 2:
        raise UserError("--samples-per-prompt must be at least 2 (two completions to compare)")
    if temperature <= 0:
        raise UserError(
            "--temperature must be above 0: greedy decoding gives the same completion twice"
        )
    prompts = read_prompts(Path(prompts_path))
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    answered, before = read_answered(out)
    model, tokenizer, template = load_policy(model_path)
    s = Session(out, str(model_path), stdin or sys.stdin, stdout or sys.stdout)
    seen: Counter[str] = Counter()
    todo = []
    for i, p in enumerate(prompts):
        seen[prompt_key(p)] += 1
        if seen[prompt_key(p)] > answered[prompt_key(p)]:
            todo.append((i, p))
    s.say(
        f"{len(prompts)} prompt(s), {len(prompts) - len(todo)} already in {out}; "
        f"{len(todo)} to go. End any time with q or Ctrl-D: every answer is saved."
    )
    for n, (i, prompt) in enumerate(todo, 1):
        torch.manual_seed(seed * 1_000_003 + i)  # per prompt: a resumed session matches
        ids = encode_prompt_ids(prompt, tokenizer, template, 10**9)
        r = sample(
            model,
            tokenizer,
            [ids],
            [prompt],
            samples_per_prompt,
            max_new_tokens,
            temperature,
            top_p,
        )
        # Two completions that differ once stripped (the pair reader strips and rejects equal ones).
        distinct: dict[str, str] = {}
        for text in r.texts:
            distinct.setdefault(text.strip(), text)
        s.say(f"\n=== {n}/{len(todo)} (prompt {i + 1}) ===\n{_show_prompt(prompt)}")
        if len(distinct) < 2:
            s.say(f"(all {samples_per_prompt} samples are identical: recorded as skip)")
            s.record(prompt, r.texts[0], r.texts[0], "skip", "identical samples")
            continue
        a, b = list(distinct.values())[:2]
        s.say(f"\n--- A ---\n{a}\n\n--- B ---\n{b}\n")
        choice = s.choose()
        if choice is None or choice == "quit":
            break
        note = s.ask("Note (optional, Enter for none): ")
        s.record(prompt, a, b, choice, note or "")
        if s.eof:
            break
    totals = before + s.counts
    summary = {
        "session": {k: s.counts[k] for k in ("a", "b", "tie", "skip")},
        "total": {k: totals[k] for k in ("a", "b", "tie", "skip")},
        "file": str(out),
        "remaining": len(todo) - sum(s.counts.values()),
    }
    counts = ", ".join(f"{k} {v}" for k, v in summary["session"].items())
    s.say(
        f"\nThis session: {counts}. File {out}: {sum(totals.values())} row(s) "
        f"({', '.join(f'{k} {v}' for k, v in summary['total'].items())}); "
        f"{summary['remaining']} prompt(s) left."
    )
    return summary

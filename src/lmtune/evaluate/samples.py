"""Generations of a few held-out prompts before and after training: RUN/samples.json.

A causal run answers the same few test (else eval) prompts greedily with its starting model
and again with the kept model, so report.html and the UI's run page show, side by side with
the reference answer, what training changed in the text the model writes. Prompts are
encoded by data.templates.generation_prompt_ids, the one prompt encoding shared by training,
`lmtune generate` and serve. Greedy decoding draws no random numbers, so producing the
samples leaves the training random stream (and so the trained weights) as they were.
"""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmtune.atomic import atomic_write_text

if TYPE_CHECKING:  # torch is imported where generation runs: the UI reads samples.json cheaply
    import torch

SAMPLES_FILE = "samples.json"
#: Prompts sampled (the first rows of the test split, else the eval split: seeded, so stable).
SAMPLE_COUNT = 4
#: New tokens per generation: enough to see a change, cheap on CPU.
SAMPLE_NEW_TOKENS = 32
#: Words of a plain-text row that become its prompt; the rest is the reference continuation.
TEXT_PROMPT_WORDS = 24


def complete(
    model: torch.nn.Module,
    tokenizer: Any,
    ids: list[int],
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
) -> str:
    """The text a causal LM writes after prompt token `ids` (greedy when temperature is 0)."""
    import torch

    device = next(model.parameters()).device
    sample = temperature > 0
    gen = model.generate(  # type: ignore[operator]
        input_ids=torch.tensor([ids], device=device),
        attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=device),
        max_new_tokens=max_new_tokens,
        do_sample=sample,
        temperature=temperature if sample else None,
        top_p=top_p if sample else None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        # One process generates (the main one, on FSDP weights already gathered): transformers
        # would sync every step with the other ranks of an FSDP module, which wait elsewhere.
        synced_gpus=False,
    )
    return str(tokenizer.decode(gen[0, len(ids) :], skip_special_tokens=True))


def printable(text: str) -> str:
    """`text` with control characters other than newline and tab shown as U+FFFD: an
    untrained model writes any token, and a page or terminal must not act on a CR or ESC."""
    return "".join(
        "\ufffd" if unicodedata.category(c) == "Cc" and c not in "\n\t" else c for c in text
    )


def _messages_text(messages: list[dict[str, Any]]) -> str:
    return "\n".join(f"{m.get('role')}: {m.get('content') or ''}" for m in messages)


def sample_prompt(row: dict[str, Any]) -> dict[str, Any]:
    """What a canonical row shows as a sample: {source, prompt, reference, kind}.

    `source` is what generation_prompt_ids encodes (the row, or its prompt field); `prompt`
    is the readable prompt. The reference is the row's own answer where it has one (SFT
    output or last assistant turn, the chosen response of a pair, a KTO completion with its
    label); a plain-text row is cut after TEXT_PROMPT_WORDS words and continues from there.
    """
    if "messages" in row:
        msgs = list(row["messages"])
        ref = msgs.pop()["content"] if msgs and msgs[-1].get("role") == "assistant" else None
        shown = _messages_text(msgs)
        return {
            "source": {"messages": msgs},
            "prompt": shown,
            "reference": ref,
            "kind": "assistant",
        }
    if "instruction" in row:
        text = str(row["instruction"]) + (f"\n\n{row['input']}" if row.get("input") else "")
        return {"source": row, "prompt": text, "reference": row.get("output"), "kind": "output"}
    if "text" in row:
        words = str(row["text"]).split(" ")
        head, rest = " ".join(words[:TEXT_PROMPT_WORDS]), " ".join(words[TEXT_PROMPT_WORDS:])
        return {
            "source": {"text": head},
            "prompt": head,
            "reference": rest or None,
            "kind": "continuation",
        }
    prompt = row["prompt"]
    shown = _messages_text(prompt) if isinstance(prompt, list) else str(prompt)
    out: dict[str, Any] = {"source": prompt, "prompt": shown, "reference": None, "kind": "none"}
    if "chosen" in row:
        out.update(reference=row["chosen"], kind="chosen")
    elif "completion" in row:
        kind = "desirable" if row.get("label") else "undesirable"
        out.update(reference=row["completion"], kind=kind)
    return out


def pick_prompts(
    splits: dict[str, list[dict[str, Any]]],
    tokenizer: Any,
    fmt: str,
    template: str,
    room: int,
    count: int = SAMPLE_COUNT,
) -> tuple[str | None, list[dict[str, Any]]]:
    """(split, samples with their prompt ids): the first `count` rows of the test split, else
    the eval split, whose encoded prompt has at most `room` tokens."""
    from lmtune.data.templates import generation_prompt_ids

    for split in ("test", "eval"):
        rows = splits.get(split) or []
        picked: list[dict[str, Any]] = []
        for row in rows:
            if len(picked) >= count:
                break
            s = sample_prompt(row)
            try:
                ids = generation_prompt_ids(s.pop("source"), fmt, tokenizer, template)
            except ValueError:  # a row the template cannot render: training rejected it too
                continue
            if 0 < len(ids) <= room:
                picked.append({**s, "ids": ids})
        if picked:
            return split, picked
    return None, []


def read_samples(run_dir: str | Path) -> dict[str, Any] | None:
    """RUN/samples.json as written by record_samples, or None when absent or unreadable."""
    try:
        data = json.loads((Path(run_dir) / SAMPLES_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("samples"), list) else None


def record_samples(
    run_dir: Path,
    stage: str,
    model: torch.nn.Module,
    tokenizer: Any,
    cfg: Any,
    prepared: Any,
    skip_reason: str | None = None,
) -> str:
    """Generate the samples of `stage` ("before" or "after" training) into RUN/samples.json.

    "before" starts the file; "after" adds to it (the same prompts: their choice is seeded),
    or says why the before column is empty (a resumed run whose file is gone). With a
    `skip_reason` the prompts and references are still written, the stage's text is not,
    and the file says why. Returns one line for the console. Main process only.
    """
    import torch

    from lmtune.tasks.base import eval_mode

    # A prompt is used as long as training could have seen it whole (within max_length).
    room = cfg.model.max_length
    fmt = prepared.format or "text"
    split, picked = pick_prompts(prepared.splits, tokenizer, fmt, cfg.data.template, room)
    if not picked:
        return f"samples: no test or eval prompt fits model.max_length; no {SAMPLES_FILE}"
    old = read_samples(run_dir) if stage == "after" else None
    notes: dict[str, str] = dict((old or {}).get("notes") or {})
    if stage == "after":
        same = old is not None and [s.get("prompt") for s in old["samples"]] == [
            p["prompt"] for p in picked
        ]
        if not same and "before" not in notes:
            notes["before"] = "not recorded: samples.json from before training is missing"
        kept = old["samples"] if same and old is not None else [{} for _ in picked]
    else:
        kept = [{} for _ in picked]
    if skip_reason:
        notes[stage] = skip_reason
    else:
        notes.pop(stage, None)
        with eval_mode(model), torch.no_grad():
            for p in picked:
                p[stage] = printable(complete(model, tokenizer, p["ids"], SAMPLE_NEW_TOKENS))
    samples = [
        {
            "prompt": p["prompt"],
            "reference": p.get("reference"),
            "reference_kind": p["kind"],
            "before": k.get("before") if stage == "after" else p.get("before"),
            "after": p.get("after"),
        }
        for p, k in zip(picked, kept, strict=True)
    ]
    data = {
        "split": split,
        "decoding": "greedy",
        "max_new_tokens": SAMPLE_NEW_TOKENS,
        "samples": samples,
        "notes": notes,
    }
    atomic_write_text(Path(run_dir) / SAMPLES_FILE, json.dumps(data, indent=2, ensure_ascii=False))
    if skip_reason:
        return f"samples: none generated {stage} training ({skip_reason})"
    return f"samples: {len(samples)} {split} prompts answered {stage} training ({SAMPLES_FILE})"


def samples_in_run(
    cfg: Any,
    stage: str,
    model: torch.nn.Module,
    tokenizer: Any,
    prepared: Any,
    run_dir: Path,
    skip_reason: str | None = None,
) -> None:
    """record_samples for a training run of a task that generates (its spec says so);
    prints what it did. Never raises: samples must not cost a training run."""
    from lmtune.runtime.dist import Dist
    from lmtune.tasks import spec

    if not spec(cfg.task).generates:
        return
    try:
        line = record_samples(run_dir, stage, model, tokenizer, cfg, prepared, skip_reason)
    except Exception as exc:  # noqa: BLE001 - best effort, like the report
        line = (
            f"warning: {SAMPLES_FILE} ({stage} training) not written ({type(exc).__name__}: {exc})"
        )
    Dist.get().print(line)

"""The model behind `lmtune serve`: find and load it, build prompts, generate, classify.

Everything here is synchronous; serve.py calls it from ONE worker thread, because a torch
model with a KV cache is not safe for concurrent calls. Generation is a plain decoding loop
rather than model.generate(), because a server needs what generate() does not give directly:
a per-request random generator (a seed without touching the global torch RNG that other
requests share), stop strings checked on the decoded text as tokens arrive, streaming of
text that is final (never a half stop string or half a UTF-8 character), and cancellation
when the client goes away. Greedy output equals generate()'s (tests/unit/test_serve_engine.py).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lmtune.errors import UserError


def _follow_pointer(pointer: Path) -> Path:
    """The version folder a registry's `current` names (a symlink, or a file holding a name).

    Only a version folder of that registry (v1, v2, ...) is followed: a pointer holding
    `../run1` or an absolute path is refused, as `lmtune registry rollback` refuses it.
    """
    from lmtune.ops.registry import read_current

    name = read_current(pointer.parent)
    if name is None:
        raise UserError(f"{pointer} does not exist; release a model into {pointer.parent} first")
    return pointer.parent / name


def resolve_serve_dir(path: str | Path) -> tuple[Path, str | None, Path | None]:
    """(model folder, version, registry folder) for a run folder or a model folder (version and
    registry None), a model registry (a folder whose `current` file or symlink names a version
    folder: v1, v2, ...) or REGISTRY/current."""
    from lmtune.evaluate.run import resolve_model_dir

    p = Path(path)
    if not p.exists() and not p.is_symlink():
        raise UserError(f"{p} does not exist; pass a run folder, a model folder or a registry")
    pointer = None
    if p.name == "current" and (p.is_symlink() or p.is_file()):
        pointer = p
    elif p.is_dir() and not (p / "lmtune_model.json").is_file() and (p / "current").exists():
        pointer = p / "current"
    if pointer is None:
        return resolve_model_dir(p), None, None
    version_dir = _follow_pointer(pointer)
    return resolve_model_dir(version_dir), version_dir.name, pointer.parent


def context_limit(model: torch.nn.Module, meta: dict[str, Any]) -> int:
    """Most tokens (prompt + completion) the model's positions allow; else the trained length."""
    cfg = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length"):
        value = getattr(cfg, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return int(meta.get("max_length") or 512)


def sample_next(
    logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator
) -> int:
    """The next token id from last-position logits: argmax when temperature is 0, else a
    sample from softmax(logits / temperature) restricted to the top-p nucleus."""
    if temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p >= 1.0:
        return int(torch.multinomial(probs, 1, generator=generator))
    sorted_p, order = probs.sort(descending=True)
    # Keep a token while the mass before it is below top_p: the smallest set reaching top_p
    # (the most likely token is always kept).
    keep = (sorted_p.cumsum(-1) - sorted_p) < top_p
    choice = torch.multinomial(sorted_p * keep, 1, generator=generator)
    return int(order[choice])


@dataclass
class GenParams:
    """One request's decoding settings (already validated and capped by the server)."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    frequency_penalty: float = 0.0  # OpenAI's: minus penalty x times the token was generated
    presence_penalty: float = 0.0  # minus penalty once a token has been generated at all
    logprobs: int | None = None  # report log-probabilities with this many alternatives


@dataclass
class Piece:
    """A bit of generated text; the last piece of a generation carries its finish_reason.
    With GenParams.logprobs, `logprobs` holds one entry per token since the previous piece:
    {"token": text, "logprob": float, "top": [(text, logprob), ...]}."""

    text: str
    finish_reason: str | None
    completion_tokens: int
    logprobs: list[dict[str, Any]] | None = None


TokenTrace = list[tuple[int, float, list[tuple[int, float]]]]  # (token, logprob, top-k)


def penalize(
    logits: torch.Tensor, counts: torch.Tensor, frequency: float, presence: float
) -> torch.Tensor:
    """OpenAI's frequency/presence penalties: logits - f*count - p*(count > 0)."""
    if frequency:
        logits = logits - frequency * counts
    if presence:
        logits = logits - presence * (counts > 0).float()
    return logits


def _generator(seed: int | None) -> torch.Generator:
    gen = torch.Generator()
    if seed is None:
        gen.seed()  # fresh entropy: unseeded requests differ, as OpenAI's do
    else:
        gen.manual_seed(seed)
    return gen


def decode_tokens(
    model: torch.nn.Module,
    prompt_ids: list[int],
    params: GenParams,
    eos_ids: set[int],
    cancelled: Callable[[], bool],
    trace: TokenTrace | None = None,
) -> Iterator[int]:
    """Yield generated token ids one at a time (KV cache), up to max_tokens or an EOS (yielded).

    Penalties apply to the tokens generated so far; with params.logprobs, `trace` receives
    (token, its log-probability, the top alternatives) from the penalised distribution
    before temperature, as OpenAI reports them.
    """
    device = next(model.parameters()).device
    generator = _generator(params.seed)
    step = torch.tensor([prompt_ids], device=device)
    past = None
    counts: torch.Tensor | None = None
    for _ in range(params.max_tokens):
        if cancelled():
            return
        with torch.inference_mode():  # grad mode is per thread: set it where the model runs
            out = model(input_ids=step, past_key_values=past, use_cache=True)
        past = out.past_key_values
        logits = out.logits[0, -1].float().cpu()
        if counts is None:
            counts = torch.zeros_like(logits)
        logits = penalize(logits, counts, params.frequency_penalty, params.presence_penalty)
        token = sample_next(logits, params.temperature, params.top_p, generator)
        counts[token] += 1  # a normal tensor (made outside inference mode): editable
        if trace is not None and params.logprobs is not None:
            logp = torch.log_softmax(logits, dim=-1)
            top = logp.topk(params.logprobs) if params.logprobs else None
            alts = list(zip(top.indices.tolist(), top.values.tolist(), strict=True)) if top else []
            trace.append((token, float(logp[token]), alts))
        yield token
        if token in eos_ids:
            return
        step = torch.tensor([[token]], device=device)


class StopText:
    """Incremental text with stop strings: what is safe to send now, and where to stop.

    Fed the full decoded text after each token, it returns only text that can no longer
    change: it holds back a tail that could be the start of a stop string, or an incomplete
    UTF-8 character (decoded as U+FFFD), until the next token settles it.
    """

    def __init__(self, stops: tuple[str, ...] | list[str]) -> None:
        self.stops = [s for s in stops if s]
        self.sent = 0  # characters of the decoded text already returned

    def _held(self, text: str) -> int:
        best = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:k]):
                    best = k
                    break
        return best

    def step(self, text: str, final: bool = False) -> tuple[str, bool]:
        """(new text to send, whether a stop string was reached) for the text so far."""
        hits = [i for i in (text.find(s, max(self.sent - len(s), 0)) for s in self.stops) if i >= 0]
        if hits:
            cut = max(min(hits), self.sent)
            delta, self.sent = text[self.sent : cut], cut
            return delta, True
        end = len(text)
        if not final:
            end = min(len(text) - self._held(text), len(text.rstrip("\ufffd")))
        if end <= self.sent:
            return "", False
        delta, self.sent = text[self.sent : end], end
        return delta, False


def _eos_ids(model: torch.nn.Module, tokenizer: Any) -> set[int]:
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    elif isinstance(gen_eos, list):
        ids.update(i for i in gen_eos if isinstance(i, int))
    return ids


def _content(message: dict[str, Any]) -> str:
    return str(message.get("content") or "")


def alpaca_row(messages: list[dict[str, Any]]) -> dict[str, str]:
    """An instruction row for a model trained on alpaca prompts: the last user message is the
    instruction; earlier messages (system, previous turns) become its input, as `role: text`."""
    last = max(i for i, m in enumerate(messages) if m["role"] == "user")
    context = "\n".join(f"{m['role']}: {_content(m)}" for m in messages[:last])
    return {"instruction": _content(messages[last]), "input": context}


@dataclass
class Engine:
    """A loaded model and what the server needs to know about it."""

    model: torch.nn.Module
    tokenizer: Any
    meta: dict[str, Any]
    kind: str  # "causal" or "classifier"
    model_id: str
    version: str | None
    max_context: int
    task: Any = None  # the classification task (classifiers only)
    eos_ids: set[int] = field(default_factory=set)
    # Prompts are tokenized on the event loop while the worker decodes: a fast tokenizer
    # raises "Already borrowed" when one thread changes its settings while another uses it.
    tokenizer_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def labels(self) -> list[str]:
        """Class names in output order (classifiers)."""
        return list(self.meta.get("labels") or [])

    def _template(self) -> str:
        return str(self.meta.get("template") or "auto")

    def _alpaca(self) -> bool:
        # Instruction models trained without a chat template saw alpaca prompts.
        template = self._template()
        has_chat = bool(getattr(self.tokenizer, "chat_template", None))
        return self.meta.get("format") == "instruction" and (
            template == "alpaca" or (template == "auto" and not has_chat)
        )

    def encode_completion(self, prompt: str) -> list[int]:
        """Prompt ids for /v1/completions: the raw text (plus BOS where the tokenizer adds one)."""
        from lmtune.data.templates import encode_prompt

        with self.tokenizer_lock:
            return encode_prompt({"text": prompt}, "text", self.tokenizer, self._template())

    def encode_chat(self, messages: list[dict[str, Any]]) -> list[int]:
        """Prompt ids for /v1/chat/completions, rendered the way the run trained: its chat
        template (the tokenizer's, or chatml), or alpaca for instruction models without one."""
        from lmtune.data.templates import encode_prompt

        if not messages or messages[-1]["role"] != "user":
            raise UserError("messages must end with a user message (the turn to answer)")
        try:
            with self.tokenizer_lock:
                if self._alpaca():
                    return encode_prompt(
                        alpaca_row(messages), "instruction", self.tokenizer, "alpaca"
                    )
                return encode_prompt(messages, "chat", self.tokenizer, self._template())
        except ValueError as exc:  # the chat template rejected these messages
            raise UserError(str(exc)) from exc

    def _decode(self, ids: list[int]) -> str:
        with self.tokenizer_lock:
            return self.tokenizer.decode(ids, skip_special_tokens=True)

    def generate(
        self,
        prompt_ids: list[int],
        params: GenParams,
        cancelled: Callable[[], bool] = lambda: False,
    ) -> Iterator[Piece]:
        """Pieces of completion text; the last one has finish_reason "stop" (EOS or a stop
        string) or "length" (max_tokens reached), or "cancelled" when cancelled() turned true."""
        scanner = StopText(params.stop)
        ids: list[int] = []  # text tokens (an EOS is counted, never decoded into text)
        finish, n = "length", 0
        trace: TokenTrace | None = [] if params.logprobs is not None else None
        for token in decode_tokens(self.model, prompt_ids, params, self.eos_ids, cancelled, trace):
            n += 1
            if token in self.eos_ids:
                finish = "stop"
                break
            ids.append(token)
            delta, hit = scanner.step(self._decode(ids))
            if hit:
                yield Piece(delta, "stop", n, self._take(trace))
                return
            if delta:
                yield Piece(delta, None, n, self._take(trace))
        if finish == "length" and n < params.max_tokens:
            finish = "cancelled"
        delta, hit = scanner.step(self._decode(ids), final=True)
        yield Piece(delta, "stop" if hit else finish, n, self._take(trace))

    def _take(self, trace: TokenTrace | None) -> list[dict[str, Any]] | None:
        """The trace's entries as text (then emptied), for the piece that carries them."""
        if trace is None:
            return None
        out = [
            {
                "token": self._decode([t]),
                "logprob": lp,
                "top": [(self._decode([a]), alp) for a, alp in alts],
            }
            for t, lp, alts in trace
            if t not in self.eos_ids
        ]
        trace.clear()
        return out

    def classify(self, items: list[dict[str, str]], batch_size: int = 32) -> list[dict[str, Any]]:
        """Label and per-label probabilities for each {"text", optional "text_pair"} item."""
        with self.tokenizer_lock:
            probs = self.task.predict(self.model, items, batch_size)
        out = []
        for row in probs:
            top = int(row.argmax())
            out.append(
                {
                    "label": self.labels[top],
                    "confidence": float(row[top]),
                    "scores": {
                        lab: float(p) for lab, p in zip(self.labels, row.tolist(), strict=True)
                    },
                }
            )
        return out


def _model_id(model_dir: Path, registry: Path | None) -> str:
    if registry is not None:
        return registry.resolve().name
    # A run's model/ folder is named after the run; an exported folder after itself.
    return model_dir.parent.name if model_dir.name in ("model", "best") else model_dir.name


def load_engine(path: str | Path) -> Engine:
    """Load the model at path (see resolve_serve_dir) for serving; UserError for a model kind
    the server has no endpoint for."""
    from lmtune.evaluate.run import load_for_inference

    model_dir, version, registry = resolve_serve_dir(path)
    model, tokenizer, meta, cfg = load_for_inference(model_dir)
    from lmtune.tasks import build_task, causal_tasks, spec

    task_name = meta["task"]
    kind = spec(task_name).serve
    if kind == "classifier":
        task = build_task(task_name, tokenizer, cfg, meta.get("labels"), None, meta.get("format"))
        limit = int(meta.get("max_length") or context_limit(model, meta))
    elif kind == "causal":
        task, limit = None, context_limit(model, meta)
    else:
        raise UserError(
            f"{model_dir} is a {task_name} model; serve runs causal LMs "
            f"({', '.join(causal_tasks())}) and classifiers (use `lmtune score` for reward models)"
        )
    return Engine(
        model=model,
        tokenizer=tokenizer,
        meta=meta,
        kind=kind,
        model_id=_model_id(model_dir, registry),
        version=version,
        max_context=limit,
        task=task,
        eos_ids=_eos_ids(model, tokenizer),
    )

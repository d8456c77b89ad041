"""Example reward functions for `task: rlhf` (rlhf.reward: examples.rewards:NAME).

A reward function is called as f(prompt, completion) and returns a number; higher is better.
`prompt` is the prompt as the data file holds it (a string, or a list of {role, content}
messages), `completion` the decoded text the policy sampled (without the end-of-sequence
token). lmtune imports the module from the current directory or PYTHONPATH, so run from the
repository root (or set PYTHONPATH) to use `examples.rewards:...`.

Verifiable rewards like these need no reward model: they check a property of the text.
vowel_share is dense (every token moves it), which is what lets even a tiny random model
show learning within a few dozen steps (tests/tasks/test_rlhf.py); contains_word and
answer_format are sparse, for models that already produce sensible text.
"""

from __future__ import annotations

import re
from typing import Any

VOWELS = frozenset("aeiou")
TARGET_WORD = "please"
_ANSWER = re.compile(r"^\s*Answer:\s*\S")


def vowel_share(prompt: Any, completion: str) -> float:
    """Share of the completion's letters that are vowels (0 when it has no letters)."""
    letters = [c for c in completion.lower() if c.isalpha()]
    if not letters:
        return 0.0  # an empty completion earns nothing, so stopping at once is not a way out
    return sum(c in VOWELS for c in letters) / len(letters)


def contains_word(prompt: Any, completion: str) -> float:
    """1.0 when the completion contains TARGET_WORD as a whole word (any case), else 0.0."""
    return 1.0 if re.search(rf"\b{re.escape(TARGET_WORD)}\b", completion, re.IGNORECASE) else 0.0


def answer_format(prompt: Any, completion: str) -> float:
    """1.0 for completions that start with 'Answer:' followed by text; 0.5 for ones that say
    'Answer:' later; 0.0 otherwise (a format reward, as in GRPO's reasoning recipes)."""
    if _ANSWER.match(completion):
        return 1.0
    return 0.5 if "Answer:" in completion else 0.0


def brevity(prompt: Any, completion: str, target_words: int = 12) -> float:
    """1.0 for completions of at most target_words words, falling linearly to 0 at twice that;
    a length shaper to combine with other rewards."""
    n = len(completion.split())
    if n == 0:
        return 0.0
    return max(0.0, min(1.0, 2.0 - n / target_words))

"""Generate the bundled demo dataset ``src/lmtune/resources/reviews.jsonl``.

The reviews are synthetic: short customer reviews composed from hand-written pieces
(openers, aspect clauses per product category, sentiment phrases of differing strength,
hedges, contrast clauses and negations). The pieces live in ``examples/reviews_phrases.json``
next to this script; the composition logic is here. The output is fully determined by the
seed and the phrase file, so running this script twice produces byte-identical files.

Each line is a JSON object ``{"text": ..., "label": ..., "product": ...}`` where ``label`` is
one of ``positive``, ``negative`` or ``neutral``. About a quarter of the rows are deliberately
"hard" (the overall label follows the conclusion of a contrast such as "the battery is great
but the strap broke", or hinges on a negation such as "not bad at all" / "not worth the
money"), so a bag-of-words classifier cannot reach 100%.

Usage::

    python examples/make_reviews.py        # writes src/lmtune/resources/reviews.jsonl
    python examples/make_reviews.py --out /tmp/r.jsonl --seed 7 --per-label 310

Standard library only.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
PHRASES_PATH = HERE / "reviews_phrases.json"
DEFAULT_OUT = REPO_ROOT / "src" / "lmtune" / "resources" / "reviews.jsonl"

SEED = 7
PER_LABEL = 310
LABELS = ("positive", "negative", "neutral")
MIN_WORDS, MAX_WORDS, MAX_SENTENCES = 8, 60, 3

# Phrase banks (see the "_about" entry of the JSON file for what each part means). Order in
# the file matters: the generator draws from them with a seeded RNG.
PHRASES: dict = json.loads(PHRASES_PATH.read_text(encoding="utf-8"))
CATEGORIES: list[dict] = [  # "grammar" names an entry of the file's "grammar" table
    {**cat, "grammar": PHRASES["grammar"][cat["grammar"]]} for cat in PHRASES["categories"]
]
# Template mix per label. Names starting with "hard_" are contrast / negation cases.
TEMPLATE_WEIGHTS: dict[str, dict[str, int]] = PHRASES["template_weights"]
STOPWORDS = frozenset(PHRASES["stopwords"])

FIRST_PERSON = re.compile(r"\b(I|I'm|my|me|we|us|our)\b")


def clashes(a: str, b: str, cat: dict) -> bool:
    """True if two clauses share a content word or an aspect group of the category."""
    wa = set(re.findall(r"[a-z'-]+", a.lower()))
    wb = set(re.findall(r"[a-z'-]+", b.lower()))
    stems_a = {w[:5] for w in wa if len(w) >= 4 and w not in STOPWORDS}
    stems_b = {w[:5] for w in wb if len(w) >= 4 and w not in STOPWORDS}
    if stems_a & stems_b:
        return True
    for group in cat["clash"]:
        hit_a = any(w.startswith(p) for w in wa for p in group)
        hit_b = any(w.startswith(p) for w in wb for p in group)
        if hit_a and hit_b:
            return True
    return False


def cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def lower_first(s: str) -> str:
    """Lower-case a sentence start unless it is the pronoun I or an acronym."""
    if re.match(r"^(I\b|I'|[A-Z]{2})", s):
        return s
    return s[:1].lower() + s[1:]


class Composer:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def pick(self, seq):
        return self.rng.choice(seq)

    def fill(self, text: str, cat: dict) -> str:
        g = cat["grammar"]
        ref = self.pick(cat["ref"])
        return text.format(ref=ref, Subj=cap(g["subj"]), **g)

    def opener(self, cat: dict, p: float = 0.4) -> list[str]:
        return [self.pick(cat["openers"])] if self.rng.random() < p else []

    def hedge(self, label: str, cat: dict, sentence: str, p: float = 0.25) -> str:
        skip = len(sentence.split()) < 3 or re.search(r"overall|price|money", sentence.lower())
        if self.rng.random() >= p or skip:
            return sentence
        options = PHRASES["hedges"][label]
        if label == "positive" and cat["kind"] == "product":
            options = options + PHRASES["hedges_product_pos"]
        return self.pick(options) + lower_first(sentence)

    def pair(self, pool_a: list[str], pool_b: list[str], cat: dict) -> tuple[str, str]:
        """One clause from each pool, about different aspects (no "the bass is deep, but the
        sound is tinny with almost no bass")."""
        for _ in range(100):
            a, b = self.pick(pool_a), self.pick(pool_b)
            if a != b and not clashes(a, b, cat):
                return a, b
        raise RuntimeError(f"no compatible clause pair for {cat['product']}")

    def join_clauses(self, pool: list[str], cat: dict, p_two: float = 0.45) -> str:
        if self.rng.random() < p_two:
            a, b = self.pair(pool, pool, cat)
            return cap(a) + self.pick([", and ", ", plus "]) + b + "."
        return cap(self.pick(pool)) + "."

    def body_with_fact(self, pool: list[str], cat: dict, p_fact: float = 0.3) -> str:
        """Aspect clause(s), sometimes preceded by a neutral fact as real reviews often are."""
        if self.rng.random() < p_fact:
            fact, clause = self.pair(cat["facts"], pool, cat)
            glue = self.pick([", but ", ", and "]) if pool is cat["neg"] else ", and "
            return f"{cap(fact)}{glue}{clause}."
        return self.join_clauses(pool, cat)

    def conclusion(self, label: str, cat: dict) -> str:
        kind = cat["kind"]  # "product" or "place"
        if label == "neutral":
            pool = PHRASES[f"neutral_{kind}"]
        elif self.rng.random() < 0.5:
            pool = PHRASES[f"{label[:3]}_strong"]
        else:
            pool = PHRASES[f"{label[:3]}_mild"] + PHRASES[f"{label[:3]}_mild_{kind}"]
        return self.hedge(label, cat, self.fill(self.pick(pool), cat))

    def negation(self, phrase: str, pool: str, cat: dict) -> list[str]:
        """A negation phrase alone, or with one cat[pool] clause before or after it."""
        form = self.rng.randrange(3)
        if form == 0:
            return self.opener(cat, 0.5) + [phrase, cap(self.pick(cat[pool])) + "."]
        if form == 1:
            return [cap(self.pick(cat[pool])) + ".", phrase]
        return self.opener(cat, 1.0) + [phrase]

    # ---- positive -----------------------------------------------------------------
    def positive(self, kind: str, cat: dict) -> list[str]:
        r = self.rng
        if kind == "plain":
            body = self.body_with_fact(cat["pos"], cat)
            if r.random() < 0.25:  # no generic verdict: the aspect clauses carry the sentiment
                return self.opener(cat, 0.6) + [body]
            return self.opener(cat) + [body, self.conclusion("positive", cat)]
        if kind == "again":
            end = cap(self.pick(cat["again_pos"])) + self.pick([".", "!"])
            return self.opener(cat, 0.3) + [self.join_clauses(cat["pos"], cat, 0.3), end]
        if kind == "hard_contrast":
            minor, pos = self.pair(cat["minor"], cat["pos"], cat)
            form = r.randrange(4)
            if form == 0:
                body = f"{cap(minor)}, but {pos}."
            elif form == 1:
                body = f"{cap(pos)}. Sure, {minor}, but that's a small price to pay."
                return self.opener(cat, 0.3) + [body]
            elif form == 2:
                doubt = self.fill(self.pick(PHRASES["pos_doubts"]), cat)
                body = f"{cap(minor)} and {doubt}, but {pos}."
            else:
                body = f"Four stars only because {minor}; otherwise {pos}."
                return self.opener(cat, 0.4) + [body]
            return [body, self.conclusion("positive", cat)]
        if kind == "hard_others":
            # someone else's complaint: only clauses not written in the first person
            neg = self.pick([c for c in cat["neg"] if not FIRST_PERSON.search(c)])
            pos = self.pick(cat["pos"])
            lead = self.pick(PHRASES["others_leads"])
            return [f"{lead} {neg}, but that wasn't my experience at all.", cap(pos) + "."]
        if kind == "hard_negation":  # negated wording that reads positive overall
            return self.negation(self.fill(self.pick(PHRASES["negated_pos"]), cat), "pos", cat)
        raise ValueError(kind)

    # ---- negative -----------------------------------------------------------------
    def negative(self, kind: str, cat: dict) -> list[str]:
        r = self.rng
        if kind == "plain":
            body = self.body_with_fact(cat["neg"], cat)
            if r.random() < 0.25:
                return self.opener(cat, 0.6) + [body]
            return self.opener(cat) + [body, self.conclusion("negative", cat)]
        if kind == "again":
            end = cap(self.pick(cat["again_neg"])) + "."
            return self.opener(cat, 0.3) + [self.join_clauses(cat["neg"], cat, 0.3), end]
        if kind == "hard_contrast":
            pos, neg = self.pair(cat["pos"], cat["neg"], cat)
            glue = self.pick([", but ", ", but sadly ", ", however ", " but "])
            body = cap(pos) + glue + neg + "."
            if r.random() < 0.5:
                return self.opener(cat, 0.3) + [body, cap(self.pick(cat["again_neg"])) + "."]
            return self.opener(cat, 0.3) + [body, self.conclusion("negative", cat)]
        if kind == "hard_wanted":
            pos, neg = self.pair(cat["pos"], cat["neg"], cat)
            lead = self.fill(self.pick(PHRASES["wanted_leads"]), cat)
            return [lead, f"{cap(pos)}, but {neg}."]
        if kind == "hard_negation":
            return self.negation(self.fill(self.pick(PHRASES["negated_neg"]), cat), "neg", cat)
        raise ValueError(kind)

    # ---- neutral ------------------------------------------------------------------
    def neutral(self, kind: str, cat: dict) -> list[str]:
        r = self.rng
        if kind == "facts":
            body = self.join_clauses(cat["facts"], cat, 0.4)
            if r.random() < 0.2:  # purely factual review
                return self.opener(cat, 0.6) + [body]
            return self.opener(cat, 0.3) + [body, self.conclusion("neutral", cat)]
        if kind == "lukewarm":
            parts = self.opener(cat, 0.8) + [self.conclusion("neutral", cat)]
            if r.random() < 0.4:
                parts.append(cap(self.pick(cat["minor"])) + ", but that's about it.")
            return parts
        if kind == "hard_mixed":
            pos, minor = self.pair(cat["pos"], cat["minor"], cat)
            if r.random() < 0.5:
                body = f"{cap(pos)}, but {minor}."
            else:
                body = f"{cap(minor)}, though {pos}."
            end = self.pick(PHRASES["mixed_endings"])
            if r.random() < 0.5:
                end = self.conclusion("neutral", cat)
            return self.opener(cat, 0.25) + [body, end]
        if kind == "hard_goodbad":
            pos, minor = self.pair(cat["pos"], cat["minor"], cat)
            end = self.pick(PHRASES["goodbad_endings"])
            return [f"The good: {pos}.", f"The bad: {minor}.", end]
        if kind == "early":
            if cat["kind"] == "place":
                return self.opener(cat, 1.0) + [self.conclusion("neutral", cat)]
            opener = self.opener(cat, 0.5)  # drawn first: RNG order fixes the output
            too_early = self.fill(self.pick(PHRASES["too_early"]), cat)
            return opener + [too_early, cap(self.pick(cat["facts"])) + "."]
        if kind == "hard_negation":
            phrase = self.pick(PHRASES["neutral_negations"])
            # at most one good point, so the verdict really is lukewarm
            first, second = self.pair(cat["pos"] + cat["facts"], cat["minor"] + cat["facts"], cat)
            if r.random() < 0.5:
                first, second = second, first
            return self.opener(cat, 0.5) + [self.fill(phrase, cat), f"{cap(first)}, and {second}."]
        raise ValueError(kind)


def valid(text: str) -> bool:
    n_words = len(text.split())
    n_sent = len(re.findall(r"[.!?](?=\s|$)", text))
    return MIN_WORDS <= n_words <= MAX_WORDS and 1 <= n_sent <= MAX_SENTENCES


def generate(seed: int = SEED, per_label: int = PER_LABEL) -> tuple[list[dict], int]:
    """Return the shuffled rows and how many of them are hard (contrast / negation) cases."""
    rng = random.Random(seed)
    comp = Composer(rng)
    rows: list[dict] = []
    seen: set[str] = set()
    n_hard = 0
    for label in LABELS:
        kinds = list(TEMPLATE_WEIGHTS[label])
        weights = [TEMPLATE_WEIGHTS[label][k] for k in kinds]
        made, attempts = 0, 0
        while made < per_label:
            attempts += 1
            if attempts > per_label * 200:
                raise RuntimeError(f"could not make {per_label} unique {label} reviews")
            cat = CATEGORIES[made % len(CATEGORIES)]  # round-robin keeps categories balanced
            kind = rng.choices(kinds, weights)[0]
            parts = getattr(comp, label)(kind, cat)
            text = " ".join(parts)
            if a := re.search(r"\.\.|,,|  ", text):
                raise AssertionError(f"bad punctuation {a.group()!r} in {text!r}")
            key = text.lower()
            if key in seen or not valid(text):
                continue
            seen.add(key)
            rows.append({"text": text, "label": label, "product": cat["product"]})
            made += 1
            n_hard += kind.startswith("hard_")
    rng.shuffle(rows)
    return rows, n_hard


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--per-label", type=int, default=PER_LABEL)
    args = ap.parse_args()
    rows, n_hard = generate(args.seed, args.per_label)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=True) + "\n")
    counts = {lab: sum(r["label"] == lab for r in rows) for lab in LABELS}
    share = f"{n_hard / len(rows):.0%} contrast/negation cases"
    print(f"wrote {len(rows)} reviews to {args.out} ({counts}; {share})")


if __name__ == "__main__":
    main()

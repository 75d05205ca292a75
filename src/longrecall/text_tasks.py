"""Text renderings of the retrieval tasks, in RULER's families, for pretrained tokenised models.

KV-cache policies are evaluated by their users on their own checkpoints and on text (RULER, Hsieh et
al. 2024, arXiv 2404.06654: needle, multi-key, multi-value, variable tracking).  These generators
write such prompts with natural-language filler, sized in the model's own tokens, with no file to
download.  The filler is RULER's "noise" haystack (a few plain sentences repeated); the needles and
questions follow RULER's templates in this project's wording.

Each example is a ``TextExample``: the ``context`` (filler with the needles at ``depth``), one or more
``questions`` with the ``answers`` each must produce, and the token counts.  A question is answered
correctly when the generated text contains every one of its answers (RULER's ``string_match_all``).

    rng = random.Random(0)
    ex = render("niah_multikey", 2048, tokenizer, rng, depth=0.5)
    ex.context, ex.questions[0].text, ex.questions[0].answers
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

from .validation import ArgumentError, check_int, check_ratio

FILLER = ("The grass is green.", "The sky is blue.", "The sun is yellow.", "Here we go.", "There and back again.")
WORDS = ("apple", "river", "candle", "falcon", "meadow", "lantern", "harbor", "pepper", "violin", "glacier",
         "compass", "orchid", "thunder", "marble", "saddle", "beacon", "willow", "copper", "quartz", "nectar")


@dataclass
class Question:
    text: str  # the question and the start of its answer ("... The pass key is")
    answers: list[str]  # every string the generation must contain


@dataclass
class TextExample:
    task: str
    context: str
    questions: list[Question]
    depth: float  # where the (first) needle sits in the filler, 0 = start, 1 = end
    context_tokens: int = 0
    prompt_tokens: int = 0  # context + the longest question


def _number(rng: random.Random, digits: int) -> str:
    return str(rng.randint(10 ** (digits - 1), 10**digits - 1))


def _variable(rng: random.Random) -> str:
    return "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(5))


def _passkey(rng: random.Random) -> tuple[str, list[str], list[Question]]:
    key = _number(rng, 5)
    intro = "There is a pass key hidden inside a lot of irrelevant text. Find it and memorize it."
    needle = f"The pass key is {key}. Remember it. {key} is the pass key."
    return intro, [needle], [Question("What is the pass key? The pass key is", [key])]


def _niah(rng: random.Random, n_keys: int, n_values: int) -> tuple[str, list[str], list[Question]]:
    intro = "Some special magic numbers are hidden inside the following text. Make sure to memorize them."
    words = rng.sample(WORDS, n_keys)
    needles, questions = [], []
    for word in words:
        values = [_number(rng, 7) for _ in range(n_values)]
        needles += [f"One of the special magic numbers for {word} is: {v}." for v in values]
        if n_values == 1:
            questions.append(Question(f"What is the special magic number for {word}? The special magic number for "
                                      f"{word} is:", values))
        else:
            questions.append(Question(f"What are all the special magic numbers for {word}? The special magic "
                                      f"numbers for {word} are:", values))
    rng.shuffle(needles)
    return intro, needles, questions


def _variable_tracking(rng: random.Random, n_chains: int = 2, hops: int = 4) -> tuple[str, list[str], list[Question]]:
    intro = "Memorize and track the chain of variable assignments hidden in the following text."
    needles, questions = [], []
    for _ in range(n_chains):
        value, names = _number(rng, 5), [_variable(rng) for _ in range(hops)]
        needles.append(f"VAR {names[0]} = {value}.")
        needles += [f"VAR {names[i]} = VAR {names[i - 1]}." for i in range(1, hops)]
        questions.append(Question(f"Find all variables that are assigned the value {value} in the text above. "
                                  f"Answer: the variables are", names))
    return intro, needles, questions  # in order: a chain must be read forwards


RENDERERS: dict[str, Callable[[random.Random], tuple[str, list[str], list[Question]]]] = {
    "passkey": _passkey,
    "niah_single": lambda rng: _niah(rng, 1, 1),
    "niah_multikey": lambda rng: _niah(rng, 4, 1),
    "niah_multivalue": lambda rng: _niah(rng, 1, 4),
    "variable_tracking": _variable_tracking,
}
TEXT_TASKS = tuple(RENDERERS)


def _assemble(intro: str, needles: list[str], n_filler: int, depth: float) -> str:
    filler = [FILLER[i % len(FILLER)] for i in range(n_filler)]
    at = round(depth * n_filler)
    if len(needles) == 1:
        body = filler[:at] + needles + filler[at:]
    else:  # several needles, in order: the first at depth, the rest spread evenly after it
        step = max(1, (n_filler - at) // len(needles))
        body = list(filler)
        for i, needle in enumerate(needles):
            body.insert(min(len(body), at + i * (step + 1)), needle)
    return intro + " " + " ".join(body)


def render(task: str, length: int, tokenizer, rng: random.Random, *, depth: float = 0.5) -> TextExample:
    """One example of ``task`` whose context plus longest question is as close to ``length`` tokens of
    ``tokenizer`` (a callable text -> list of ids, or a Hugging Face tokenizer) as filler allows."""
    if task not in RENDERERS:
        raise ArgumentError("task", f"one of {', '.join(TEXT_TASKS)}", repr(task))
    check_int(length=length)
    check_ratio("depth", depth)
    count = _counter(tokenizer)
    intro, needles, questions = RENDERERS[task](rng)
    longest = max(count(" " + q.text) for q in questions)

    def tokens(n_filler: int) -> int:
        return count(_assemble(intro, needles, n_filler, depth)) + longest

    if tokens(0) > length:
        raise ArgumentError("length", f"at least {tokens(0)} tokens for task {task!r} with this tokenizer (its "
                            "needles and question without filler)", repr(length))
    low, high = 0, 1
    while tokens(high) <= length:  # grow, then bisect on the number of filler sentences
        low, high = high, high * 2
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if tokens(mid) <= length else (low, mid)
    context = _assemble(intro, needles, low, depth)
    return TextExample(task, context, questions, depth, count(context), count(context) + longest)


def _counter(tokenizer) -> Callable[[str], int]:
    if hasattr(tokenizer, "encode"):
        return lambda text: len(tokenizer.encode(text, add_special_tokens=False))
    return lambda text: len(tokenizer(text))

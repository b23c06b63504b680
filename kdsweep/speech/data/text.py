"""Speech transcripts: normalization, the CTC character vocabulary and the sentence sources.

Sentences come from templates (the narrow "commands" domain) or the Debian ``fortunes`` files
(the "open" domain, read by `kdsweep.text.fortunes`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from kdsweep.errors import KDSweepError
from kdsweep.text import fortunes
from kdsweep.text.fortunes import FORTUNES_DIR

_ONES = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
    "nineteen",
)  # fmt: skip
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")


def number_to_words(n: int) -> str:
    """Spell a non-negative integer in English words ("one hundred five")."""
    if n < 0:
        raise ValueError(f"number_to_words: negative number {n}")
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + ("" if ones == 0 else " " + _ONES[ones])
    if n < 1000:
        hundreds, rest = divmod(n, 100)
        return _ONES[hundreds] + " hundred" + ("" if rest == 0 else " " + number_to_words(rest))
    for value, name in ((10**9, "billion"), (10**6, "million"), (1000, "thousand")):
        if n >= value:
            head, rest = divmod(n, value)
            tail = "" if rest == 0 else " " + number_to_words(rest)
            return number_to_words(head) + " " + name + tail
    raise AssertionError("unreachable")


def _spell_number_token(match: re.Match[str]) -> str:
    digits = match.group(0)
    if len(digits) > 9:  # long ids / phone numbers: read digit by digit
        return " ".join(_ONES[int(d)] for d in digits)
    return " " + number_to_words(int(digits)) + " "


def normalize_text(text: str) -> str:
    """Lowercase, spell out digits, keep only a-z, apostrophe and single spaces.

    Apostrophes survive only inside words ("don't"); quote marks around words are dropped.
    """
    text = text.replace("\u2019", "'").replace("`", "'").lower()
    text = re.sub(r"\d+", _spell_number_token, text)
    text = re.sub(r"[^a-z' ]+", " ", text)
    text = re.sub(r"(?<![a-z])'|'(?![a-z])", " ", text)
    return " ".join(text.split())


class CharVocab:
    """Character vocabulary for CTC: index 0 = blank, then space, apostrophe, a-z (29 symbols)."""

    blank: int = 0

    def __init__(self) -> None:
        self.symbols: list[str] = ["<blank>", " ", "'"] + [chr(c) for c in range(97, 123)]
        self._index = {s: i for i, s in enumerate(self.symbols) if i != self.blank}

    def __len__(self) -> int:
        return len(self.symbols)

    @property
    def labels(self) -> list[str]:
        """Labels for ``pyctcdecode.build_ctcdecoder``: blank is "" and space is " "."""
        return [""] + self.symbols[1:]

    def encode(self, text: str) -> list[int]:
        """Map a normalized transcript to label ids; raises on characters outside the vocab."""
        try:
            return [self._index[ch] for ch in text]
        except KeyError as exc:
            raise KDSweepError(
                f"transcript {text!r}: character {exc.args[0]!r} is not in the vocabulary "
                "(run normalize_text first)"
            ) from None

    def decode(self, ids: Iterable[int]) -> str:
        """Map label ids back to text, skipping blanks (no CTC collapsing: see decoding.py)."""
        return "".join(self.symbols[i] for i in ids if i != self.blank)


_CARD_RANKS = (
    "ace", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "jack",
    "queen", "king",
)  # fmt: skip
_CARD_SUITS = ("hearts", "spades", "clubs", "diamonds")
_ROOMS = (
    "kitchen", "bedroom", "living room", "bathroom", "garage", "office", "hallway",
    "dining room", "basement", "garden",
)  # fmt: skip
_DEVICES = ("lights", "heater", "fan", "radio", "television", "music", "oven", "lamp")
_DIRECTIONS = ("forward", "backward", "left", "right", "up", "down")
_UNITS = ("meters", "steps", "minutes", "seconds", "degrees", "percent")
_GENRES = ("jazz", "rock", "classical music", "the news", "some blues", "country music")
_CITIES = ("boston", "paris", "london", "berlin", "tokyo", "madrid", "chicago", "denver")
_DAYS = ("today", "tomorrow", "tonight", "on monday", "on friday", "this weekend")
_PEOPLE = ("mom", "dad", "alice", "bob", "the office", "my sister", "grandma", "the doctor")


def _small_number(rng: np.random.Generator) -> str:
    return number_to_words(int(rng.integers(1, 100)))


def _command_sentence(rng: np.random.Generator) -> str:
    """One sentence of the narrow "commands" domain (digits, cards, home/navigation commands)."""

    def pick(options: Sequence[str]) -> str:
        return options[int(rng.integers(len(options)))]

    kind = int(rng.integers(8))
    if kind == 0:  # digit strings
        return " ".join(_ONES[int(d)] for d in rng.integers(0, 10, size=int(rng.integers(3, 8))))
    if kind == 1:  # one to three playing cards
        cards = [f"{pick(_CARD_RANKS)} of {pick(_CARD_SUITS)}" for _ in range(rng.integers(1, 4))]
        return " ".join(cards) if rng.random() < 0.5 else " and ".join(cards)
    if kind == 2:
        state = pick(("on", "off"))
        dev = pick(_DEVICES)
        if rng.random() < 0.5:
            return f"turn the {dev} {state} in the {pick(_ROOMS)}"
        return f"turn {state} the {dev} in the {pick(_ROOMS)}"
    if kind == 3:
        return pick(
            (
                f"set the thermostat to {_small_number(rng)} degrees",
                f"set a timer for {_small_number(rng)} {pick(('minutes', 'seconds'))}",
                f"set the volume to {_small_number(rng)} percent",
                f"dim the lights in the {pick(_ROOMS)} to {_small_number(rng)} percent",
            )
        )
    if kind == 4:
        return f"go {pick(_DIRECTIONS)} {_small_number(rng)} {pick(_UNITS[:2])}"
    if kind == 5:
        return pick(
            (
                f"play {pick(_GENRES)} in the {pick(_ROOMS)}",
                f"what is the weather in {pick(_CITIES)} {pick(_DAYS)}",
                f"call {pick(_PEOPLE)} {pick(_DAYS)}",
                f"remind me to call {pick(_PEOPLE)} {pick(_DAYS)}",
            )
        )
    if kind == 6:
        return pick(
            (
                f"open the {pick(('garage door', 'front door', 'window', 'blinds'))}",
                f"close the {pick(('garage door', 'front door', 'window', 'blinds'))}",
                f"stop the {pick(_DEVICES)}",
                f"is the {pick(_DEVICES)} on in the {pick(_ROOMS)}",
            )
        )
    # kind 7: mixed digits and cards, like the CMU "cards" test clips
    return f"{pick(_ONES[1:11])} {pick(_CARD_RANKS)} of {pick(_CARD_SUITS)}"


def command_sentences(n: int, seed: int = 0) -> list[str]:
    """``n`` sentences of the "commands" domain, unique where the template space allows."""
    rng = np.random.default_rng(seed)
    out: list[str] = []
    seen: set[str] = set()
    attempts = 0
    while len(out) < n:
        s = _command_sentence(rng)
        attempts += 1
        # Prefer unique sentences; after many collisions accept repeats (tiny template space).
        if s not in seen or attempts > 50 * n:
            out.append(s)
            seen.add(s)
    return out


# Categories skipped: pictures, code, one-record files, untranslated text.
_FORTUNE_SKIP = {"ascii-art", "art", "perl", "pratchett", "translate-me"}
_ABBREV = re.compile(r"\b(mr|mrs|ms|dr|st|jr|sr|vs|etc|prof|gen|col|lt|no|co|inc)\.", re.I)
_ALLOWED = re.compile(r"^[A-Za-z0-9 '\u2019.,;:!?\"()-]+$")


def fortune_records(fortunes_dir: Path = FORTUNES_DIR) -> Iterator[tuple[str, str]]:
    """Yield (category, record prose) from the fortunes files, minus non-prose categories."""
    for rec in fortunes.fortune_records(fortunes_dir, skip=_FORTUNE_SKIP):
        if rec.prose:
            yield rec.category, rec.prose


def fortune_sentences(
    min_words: int = 3, max_words: int = 14, fortunes_dir: Path = FORTUNES_DIR
) -> list[str]:
    """Short single-sentence fortunes, normalized (sorted, unique: deterministic)."""
    out: set[str] = set()
    for _, body in fortune_records(fortunes_dir):
        # single sentence: at most one terminal punctuation mark, at the very end
        if not _ALLOWED.match(body) or _ABBREV.search(body):
            continue
        if re.search(r"[.!?]\S*\s+\S", body):
            continue
        if re.search(r"\b[A-Z]{2,}\b", body):  # acronyms: TTS would spell them out
            continue
        s = normalize_text(body)
        words = s.split()
        if any(len(w) > 1 and not re.search("[aeiouy]", w) for w in words):
            continue  # txt-speak ("u cn rd ths") is unpronounceable as written
        if min_words <= len(words) <= max_words:
            out.add(s)
    return sorted(out)


def open_sentences(n: int, seed: int = 0) -> list[str]:
    """``n`` sentences of the "open" domain (fortunes); repeats only if the pool is smaller."""
    pool = fortune_sentences()
    if not pool:
        raise KDSweepError(f"fortunes_dir: no usable sentences in {FORTUNES_DIR}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(pool))
    return [pool[order[i % len(pool)]] for i in range(n)]

"""Words for people: durations and rates in human units, and "a"/"an" before a name."""

from __future__ import annotations

import re

# Letters whose spoken name starts with a vowel sound when a name begins with an abbreviation
# ("an XGBClassifier", "an SVC", "an LGBMClassifier", "an MLPClassifier").
_VOWEL_SOUND_LETTERS = set("AEFHILMNORSX")
# Words spelt with a vowel but said with a consonant sound, and the reverse.
_CONSONANT_SOUND = re.compile(r"^(uni|use|usu|uti|eu|one|once|ubi)", re.IGNORECASE)
_VOWEL_SOUND = re.compile(r"^(hour|honest|honou?r|heir)", re.IGNORECASE)


def duration(seconds: float | None) -> str:
    """'0.25 s', '40 s', '3 min 20 s', '1 h 5 min', '2 d 3 h': two units at most, no zeros."""
    if seconds is None:
        return "—"
    if seconds < 0:
        return "-" + duration(-seconds)
    if seconds < 1:
        return f"{seconds:.2f} s"
    if seconds < 10:
        return f"{seconds:.1f} s"
    total = round(seconds)
    if total < 60:
        return f"{total} s"
    units = [("d", 86400), ("h", 3600), ("min", 60), ("s", 1)]
    parts: list[str] = []
    for name, size in units:
        count, total = divmod(total, size)
        if count or parts:
            parts.append(f"{count} {name}" if count else "")
        if len(parts) == 2:
            break
    return " ".join(p for p in parts if p)


def per_second(value: float | None, unit: str = "rows") -> str:
    """'85,000 rows/s', '12 rows/s', '0.5 rows/s'."""
    if value is None:
        return "—"
    return f"{value:,.0f} {unit}/s" if value >= 10 else f"{value:.2g} {unit}/s"


def article(name: str) -> str:
    """'a' or 'an' for a class or word as it is said: an XGBClassifier, a Pipeline, an hour."""
    word = name.strip().lstrip("_")
    if not word:
        return "a"
    if _VOWEL_SOUND.match(word):
        return "an"
    if _CONSONANT_SOUND.match(word):
        return "a"
    if re.match(r"[A-Z]{2}", word):  # an abbreviation is said letter by letter: an SVC
        return "an" if word[0] in _VOWEL_SOUND_LETTERS else "a"
    return "an" if word[0].lower() in "aeiou" else "a"


def with_article(name: str) -> str:
    """'an XGBClassifier', 'a Pipeline'."""
    return f"{article(name)} {name}"

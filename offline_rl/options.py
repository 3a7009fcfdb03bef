"""The options a component understands, declared beside it.

Every class (or function) a config group builds through ``_target_`` declares the options its YAML
node may hold, and what each may be, as ``OPTIONS = {"alpha": number_in(0, inf), ...}`` (a class
attribute; for a function, the ``declares`` decorator). A subclass inherits its bases' options and
adds or narrows its own. ``offline_rl.config.validate`` collects them from the ``_target_`` of every
node of a composed config, so a new algorithm, pre-training scheme or fine-tuning option brings its
own rules and no central table changes. A value with no rule is an error there (a key renamed in the
YAML cannot silently lose its check).

This module is the bottom layer: it imports nothing from the package.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping


@dataclass(frozen=True)
class Rule:
    """A check of one value and the words for what it allows (they end the error message:
    ``algo.tau=1.5 is not allowed: expected a number in (0.0, 1.0]``)."""

    check: Callable[[Any], bool]
    allowed: str


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    """A finite number (inf and nan are no setting's value: they fail at the first update)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def int_at_least(low: int, note: str = "") -> Rule:
    return Rule(lambda v: _is_int(v) and v >= low, f"an integer >= {low}{note}")


def int_in(low: int, high: int) -> Rule:
    return Rule(lambda v: _is_int(v) and low <= v <= high, f"an integer in [{low}, {high}]")


def number_in(low: float, high: float, low_open: bool = False, high_open: bool = False) -> Rule:
    def check(v: Any) -> bool:
        if not _is_number(v):
            return False
        return (v > low if low_open else v >= low) and (v < high if high_open else v <= high)

    if math.isinf(high):
        text = f"a finite number {'>' if low_open else '>='} {low}"
    else:
        text = f"a number in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    return Rule(check, text)


def non_negative() -> Rule:
    return number_in(0.0, math.inf)


def positive_number() -> Rule:
    return Rule(lambda v: _is_number(v) and v > 0, "a finite number > 0")


def any_number() -> Rule:
    return Rule(_is_number, "a number")


def boolean() -> Rule:
    return Rule(lambda v: isinstance(v, bool), "true or false")


def one_of(*values: Any) -> Rule:
    words = [str(v) for v in values]
    text = ", ".join(words) if len(words) > 2 else " or ".join(words)
    return Rule(lambda v: v in values, text)


def text(what: str) -> Rule:
    """A non-empty string."""
    return Rule(lambda v: isinstance(v, str) and v.strip() != "", what)


def text_or_null(what: str) -> Rule:
    """null or a non-empty string (an id, a path) that is not checked further here."""
    return Rule(lambda v: v is None or (isinstance(v, str) and v.strip() != ""), f"null or {what}")


def optional(rule: Rule, meaning: str) -> Rule:
    """null, which means ``meaning``, or a value ``rule`` allows."""
    return Rule(lambda v: v is None or rule.check(v), f"null ({meaning}) or {rule.allowed}")


def declares(options: Mapping[str, Rule]) -> Callable:
    """For a function a config builds (``_target_``): the options its node may hold."""
    def mark(function: Callable) -> Callable:
        function.OPTIONS = dict(options)
        return function
    return mark


def option_problems(owner: Any, values: Mapping[str, Any], path: str) -> list[str]:
    """What a component says is wrong with its node's values taken together (a setting that
    needs another), through its ``option_problems(values, path)`` classmethod if it has one;
    ``validate`` reports them with the single-value problems."""
    check = getattr(owner, "option_problems", None)
    return list(check(values, path)) if callable(check) else []


def declared_options(owner: Any) -> dict[str, tuple[Rule, str]]:
    """``{option: (rule, where it is declared)}`` for a class (its own ``OPTIONS`` over those of
    its bases) or a function (``declares``)."""
    if isinstance(owner, type):
        options = {}
        for klass in reversed(owner.__mro__):
            for key, rule in vars(klass).get("OPTIONS", {}).items():
                options[key] = (rule, f"{klass.__module__}.{klass.__qualname__}")
        return options
    where = f"{owner.__module__}.{owner.__qualname__}"
    return {key: (rule, where) for key, rule in getattr(owner, "OPTIONS", {}).items()}

# yw_ext, AGPL-3.0 license
"""Class names and synonyms: validation, the ``"a,b|c"`` string form, and the class-major prompt layout.

A vocabulary is K classes. Each class has a display name and one or more text prompts (synonyms); a class's
score is the maximum over its prompts. Inside the detector the prompts are laid out class-major and padded to
the same count G per class by repeating the class's first prompt (a repeated prompt cannot change a maximum),
so the text tensor is ``(1, K * G, D)`` and the head's output reshapes to ``(B, K, G, A)`` for the max.

Examples:
    >>> parse_classes(parse_class_string("person, car|automobile"))
    (['person', 'car'], [['person'], ['car', 'automobile']])
"""

from __future__ import annotations

from typing import Any, Sequence

MAX_PROMPTS = 4096
"""Default largest number of text prompts (K classes x G prompts per class, after padding) a vocabulary may have.

LVIS (1203 classes) fits with room to spare; past a few thousand prompts the neck's (B, heads, H*W, K*G)
attention tensor dominates memory. The model's limit is ``yw_ext.vocab.MAX_PROMPTS`` (this value unless raised).
"""


def split_class_string(text: str | None) -> list[list[str]]:
    """Split ``"person, car|automobile"`` into stripped synonym groups, keeping empty items for the caller to judge.

    Examples:
        >>> split_class_string("person, car| automobile,,")
        [['person'], ['car', 'automobile'], [], []]
    """
    return [[s.strip() for s in part.split("|") if s.strip()] for part in str(text or "").split(",")]


def parse_class_string(text: str | None) -> list[Any]:
    """The command-line / text-box form ``"person, car|automobile"`` -> ``["person", ["car", "automobile"]]``.

    Classes are separated by ``,``, a class's synonyms by ``|`` (first = display name); blank items are dropped.

    Examples:
        >>> parse_class_string("person, car|automobile,")
        ['person', ['car', 'automobile']]
    """
    return [syn[0] if len(syn) == 1 else syn for syn in split_class_string(text) if syn]


def parse_classes(classes: Any) -> tuple[list[str], list[list[str]]]:
    """Validate class names and split them into display names and prompt lists.

    Args:
        classes: A non-empty list whose items are a class name (``"person"``) or a list of synonyms whose first
            item is the display name (``["car", "automobile"]``); or a dict ``{name: [prompts...]}``.

    Returns:
        (names, prompts): K display names and, per class, its list of prompts.

    Raises:
        TypeError: classes is not a list/tuple/dict, or an item is not a string / list of strings.
        ValueError: empty vocabulary, empty name or prompt, duplicate class names.

    Examples:
        >>> parse_classes(["person", ["car", "automobile"]])
        (['person', 'car'], [['person'], ['car', 'automobile']])
    """
    if isinstance(classes, str):
        raise TypeError(f"classes must be a list of class names, not the string {classes!r}; e.g. ['person', 'bus'].")
    if isinstance(classes, dict):
        items = []
        for k, v in classes.items():
            v = [v] if isinstance(v, str) else list(v)
            items.append([k, *[p for p in v if p != k]])  # the key is the display name and first prompt
    elif isinstance(classes, (list, tuple)):
        items = list(classes)
    else:
        raise TypeError(f"classes must be a list (or dict) of class names, got {type(classes).__name__}.")
    if not items:
        raise ValueError("classes is empty: give at least one class name, e.g. ['person'].")
    names, prompts = [], []
    for i, item in enumerate(items):
        group = [item] if isinstance(item, str) else item
        if not isinstance(group, (list, tuple)) or not group:
            raise TypeError(
                f"class {i} is {item!r} ({type(item).__name__}); each class must be a non-empty string or a "
                "non-empty list of strings (synonyms)."
            )
        clean = []
        for p in group:
            if not isinstance(p, str):
                raise TypeError(f"class {i}: prompt {p!r} is a {type(p).__name__}, not a string.")
            if not p.strip():
                raise ValueError(f"class {i}: empty class name or prompt {p!r}.")
            clean.append(p.strip())
        names.append(clean[0])
        prompts.append(clean)
    seen: dict[str, int] = {}
    for i, n in enumerate(names):
        if n in seen:
            raise ValueError(f"duplicate class name {n!r} (classes {seen[n]} and {i}); class names must be unique.")
        seen[n] = i
    return names, prompts


def pad_prompts(prompts: list[list[str]], max_prompts: int = MAX_PROMPTS) -> tuple[list[str], int]:
    """Lay prompts out class-major, each class padded to G prompts by repeating its first prompt.

    Args:
        prompts: Per class, its prompts.
        max_prompts: Largest K * G allowed.

    Returns:
        (flat list of K * G prompts, G).

    Raises:
        ValueError: K * G exceeds ``max_prompts``.

    Examples:
        >>> pad_prompts([["car", "automobile"], ["bus"]])
        (['car', 'automobile', 'bus', 'bus'], 2)
    """
    g = max(len(p) for p in prompts)
    if len(prompts) * g > max_prompts:
        raise ValueError(
            f"vocabulary too large: {len(prompts)} classes x {g} prompts per class = {len(prompts) * g} prompts, "
            f"the maximum is yw_ext.vocab.MAX_PROMPTS = {max_prompts}."
        )
    return [q for p in prompts for q in (p + [p[0]] * (g - len(p)))], g


def names_dict(names: Sequence[str]) -> dict[int, str]:
    """Ultralytics-style ``{index: name}`` dict.

    Examples:
        >>> names_dict(["a", "b"])
        {0: 'a', 1: 'b'}
    """
    return dict(enumerate(names))


__all__ = ["MAX_PROMPTS", "names_dict", "pad_prompts", "parse_class_string", "parse_classes", "split_class_string"]

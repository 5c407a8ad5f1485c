# yw_ext, AGPL-3.0 license
"""Torch-free core of yw_ext: what every layer shares and nothing heavy imports.

Only the standard library and numpy. The runtime, the CLI, the demo, prompt files, the vocabulary and the hub build
on it; it imports nothing else of yw_ext, and never torch or ultralytics.

- ``log``: ``LOGGER`` (the logger Ultralytics prints with, looked up by name, so no import of Ultralytics).
- ``io``: atomic writes (temporary file next to the target, then ``os.replace``), ``.npz`` archives.
- ``classes``: class names and synonyms: the list/dict form, the ``"a,b|c"`` string form, padding prompts.
- ``embeddings``: numpy checks of class embeddings (shape, width, finite, non-zero, prompt count).

Examples:
    >>> from yw_ext.core import parse_class_string, parse_classes
    >>> parse_classes(parse_class_string("person, car|automobile"))
    (['person', 'car'], [['person'], ['car', 'automobile']])
"""

from yw_ext.core.classes import MAX_PROMPTS, names_dict, pad_prompts, parse_class_string, parse_classes
from yw_ext.core.embeddings import check_embedding_array
from yw_ext.core.io import atomic_path, atomic_write, load_npz, save_npz
from yw_ext.core.log import LOGGER

__all__ = [
    "LOGGER",
    "MAX_PROMPTS",
    "atomic_path",
    "atomic_write",
    "check_embedding_array",
    "load_npz",
    "names_dict",
    "pad_prompts",
    "parse_class_string",
    "parse_classes",
    "save_npz",
]

# yw_ext, AGPL-3.0 license
"""Reading pickled checkpoints without running their code: a restricted unpickler for ``torch.load``.

``torch.load(weights_only=True)`` refuses a file as soon as it holds one object it does not know (MMEngine's
``meta``: message hubs, history buffers, numpy scalars), and ``weights_only=False`` runs whatever the file asks for.
``safe_torch_load`` sits between the two:

- tensors and storages are rebuilt as ``torch.load`` rebuilds them (torch's own zip reader and storage handling);
- plain containers (``dict``, ``list``, ``tuple``, ``set``, ``OrderedDict``), torch dtypes / devices / sizes, and numpy
  scalars, dtypes and arrays are rebuilt through an explicit allow-list of callables that only build data;
- every other global becomes a ``PickledGlobal``: an inert placeholder class that records the module and name the
  file asked for and swallows its arguments and state. Nothing is imported, nothing the file names is called.

The state dict is all the checkpoint converters need, so a file whose ``meta`` holds objects from packages that are
not installed (or a booby-trapped ``__reduce__``) still gives its tensors.

Examples:
    >>> ckpt = safe_torch_load("yolo_world_v2_s_finetuned.pth")  # doctest: +SKIP
    >>> placeholders(ckpt["meta"])  # doctest: +SKIP
    ['mmengine.logging.message_hub.MessageHub']
"""

from __future__ import annotations

import _compat_pickle
import collections
import os
import pickle
import types
from typing import Any, Callable

import numpy as np
import torch

PLACEHOLDERS_SHOWN = 5
"""Largest number of placeholder names listed in a message."""

_RENAMED_MODULES = {"numpy.core.multiarray": "numpy._core.multiarray"}
"""numpy 1 module names in old pickles -> the names used in the allow-list (Python 2 names: ``_compat_pickle``)."""


class PickledGlobal:
    """Stand-in for a class or function a pickle names but that was neither imported nor called.

    Instances record the arguments (``args``, ``kwargs``), the ``state`` and any items / elements the pickle gave
    them; the class records ``pickled_module`` and ``pickled_name``. Nothing else happens.

    Examples:
        >>> cls = placeholder_class("os", "system")
        >>> obj = cls("touch x")
        >>> obj.pickled_name, obj.args
        ('os.system', ('touch x',))
    """

    pickled_module = "?"
    pickled_qualname = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> PickledGlobal:
        """Record the arguments; call nothing."""
        obj = super().__new__(cls)
        object.__setattr__(obj, "args", args)
        object.__setattr__(obj, "kwargs", kwargs)
        object.__setattr__(obj, "state", None)
        object.__setattr__(obj, "items", [])
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Accept any arguments (``__new__`` recorded them)."""

    def __setstate__(self, state: Any) -> None:
        """Record the pickled state (``BUILD``)."""
        object.__setattr__(self, "state", state)

    def __setitem__(self, key: Any, value: Any) -> None:
        """Record a dict-like item (``SETITEMS`` on a dict subclass)."""
        self.items.append((key, value))

    def append(self, value: Any) -> None:
        """Record a list-like element (``APPENDS`` on a list subclass)."""
        self.items.append(value)

    def extend(self, values: Any) -> None:
        """Record list-like elements."""
        self.items.extend(values)

    @property
    def pickled_name(self) -> str:
        """``module.name`` of the global the pickle asked for."""
        return f"{self.pickled_module}.{self.pickled_qualname}"

    def __repr__(self) -> str:
        return f"<not unpickled: {self.pickled_name}>"


def placeholder_class(module: str, name: str) -> type:
    """A ``PickledGlobal`` subclass standing for the global ``module.name`` (nothing is imported).

    Examples:
        >>> placeholder_class("mmengine.logging", "MessageHub").pickled_qualname
        'MessageHub'
    """
    return type(f"PickledGlobal[{module}.{name}]", (PickledGlobal,),
                {"pickled_module": module, "pickled_qualname": name, "__module__": __name__})


def _placeholder(module: str, name: str, args: tuple) -> PickledGlobal:
    """A placeholder instance for a refused call of an allowed global."""
    return placeholder_class(module, name)(*args)


def _latin1_encode(*args: Any) -> Any:
    """``_codecs.encode(text, "latin1")`` (how protocol-2 pickles store ``bytes``); anything else is refused."""
    if len(args) == 2 and isinstance(args[0], str) and args[1] in ("latin1", "latin-1"):
        return args[0].encode("latin1")
    return _placeholder("_codecs", "encode", args)


def _np_dtype(*args: Any) -> Any:
    """``numpy.dtype(spec, align, copy)`` for a type string only (no objects with a ``.dtype``)."""
    if args and isinstance(args[0], str) and all(isinstance(a, bool) for a in args[1:]):
        return np.dtype(*args)
    return _placeholder("numpy", "dtype", args)


def _np_scalar(*args: Any) -> Any:
    """``numpy._core.multiarray.scalar(dtype, bytes)`` for numeric (non-object) dtypes."""
    if len(args) == 2 and isinstance(args[0], np.dtype) and not args[0].hasobject and isinstance(args[1], bytes):
        return np.frombuffer(args[1], dtype=args[0], count=1)[0]
    return _placeholder("numpy._core.multiarray", "scalar", args)


def _np_reconstruct(*args: Any) -> Any:
    """``numpy._core.multiarray._reconstruct(ndarray, shape, b"b")``: an empty ``ndarray`` (filled by its state)."""
    if len(args) == 3 and args[0] is np.ndarray:
        return np.ndarray.__new__(np.ndarray, args[1], args[2])
    return _placeholder("numpy._core.multiarray", "_reconstruct", args)


def _no_hooks(rebuild: Callable, hooks_at: int) -> Callable:
    """Wrap a torch tensor rebuild function so the pickled backward hooks (argument ``hooks_at``) are dropped."""

    def call(*args: Any) -> Any:
        args = list(args)
        if len(args) > hooks_at:
            args[hooks_at] = collections.OrderedDict()
        return rebuild(*args)

    return call


def _rebuild_from_type(func: Any, new_type: Any, args: tuple, state: Any) -> Any:
    """``torch._tensor._rebuild_from_type_v2`` for ``Tensor`` / ``Parameter`` only, without pickled attributes."""
    if isinstance(func, type) and issubclass(func, PickledGlobal):
        return func(*args)
    tensor = func(*args)
    if not isinstance(tensor, torch.Tensor):
        return tensor
    if new_type is torch.nn.Parameter:
        return torch.nn.Parameter(tensor, requires_grad=tensor.requires_grad)
    return tensor


def _torch_device(*args: Any) -> Any:
    """``torch.device(type[, index])`` from plain values."""
    if args and all(isinstance(a, (str, int)) for a in args):
        return torch.device(*args)
    return _placeholder("torch", "device", args)


def _allowed() -> dict[tuple[str, str], Any]:
    """The globals a checkpoint may name and get: data-building callables and plain types (explicit list)."""
    u = torch._utils
    allowed: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("builtins", "set"): set, ("builtins", "frozenset"): frozenset, ("builtins", "complex"): complex,
        ("builtins", "slice"): slice, ("builtins", "bytearray"): bytearray,
        ("_codecs", "encode"): _latin1_encode,
        ("torch", "Size"): torch.Size, ("torch", "device"): _torch_device,
        ("torch", "UntypedStorage"): torch.UntypedStorage, ("torch.storage", "UntypedStorage"): torch.UntypedStorage,
        ("torch._utils", "_rebuild_tensor"): u._rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): _no_hooks(u._rebuild_tensor_v2, 5),
        ("torch._utils", "_rebuild_parameter"): _no_hooks(u._rebuild_parameter, 2),
        ("torch._utils", "_rebuild_parameter_with_state"): lambda data, grad, *_: u._rebuild_parameter(
            data, grad, collections.OrderedDict()),  # hooks and extra attributes dropped
        ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type,
        ("torch.nn.parameter", "Parameter"): torch.nn.Parameter,
        ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): _np_dtype,
        ("numpy._core.multiarray", "scalar"): _np_scalar,
        ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
    }
    for name in dir(torch):  # torch.float32, torch.bfloat16, ... are pickled as globals of module "torch"
        if isinstance(getattr(torch, name, None), torch.dtype):
            allowed[("torch", name)] = getattr(torch, name)
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """A ``pickle.Unpickler`` whose ``find_class`` imports nothing: allowed globals or ``PickledGlobal`` placeholders.

    Used by ``torch.load`` through ``pickle_module=restricted_pickle`` (``torch.load`` keeps handling storages).
    ``self.refused`` lists every global that became a placeholder.

    Examples:
        >>> import io, os
        >>> class Evil:
        ...     def __reduce__(self):
        ...         return (os.system, ("echo pwned",))
        >>> obj = RestrictedUnpickler(io.BytesIO(pickle.dumps(Evil()))).load()
        >>> obj.pickled_name in ("posix.system", "nt.system")
        True
    """

    _ALLOWED: dict | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """As ``pickle.Unpickler``; starts an empty ``refused`` list."""
        super().__init__(*args, **kwargs)
        self.refused: list[str] = []

    def find_class(self, module: str, name: str) -> Any:
        """The allowed object for ``module.name``, else a placeholder class (never an import)."""
        if RestrictedUnpickler._ALLOWED is None:
            RestrictedUnpickler._ALLOWED = _allowed()
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))  # Python 2 names (protocol 2)
        module = _RENAMED_MODULES.get(module, _compat_pickle.IMPORT_MAPPING.get(module, module))
        found = RestrictedUnpickler._ALLOWED.get((module, name))
        if found is not None:
            return found
        self.refused.append(f"{module}.{name}")
        return placeholder_class(module, name)


def _load(file: Any, **kwargs: Any) -> Any:
    """``pickle.load`` with the restricted unpickler (torch's legacy format reads its header with it)."""
    return RestrictedUnpickler(file, **kwargs).load()


restricted_pickle = types.SimpleNamespace(Unpickler=RestrictedUnpickler, load=_load, __name__=__name__)
"""A ``pickle``-like module for ``torch.load(pickle_module=...)``."""


def safe_torch_load(path: str | os.PathLike) -> Any:
    """``torch.load`` of ``path`` (CPU) with the restricted unpickler: tensors and data, placeholders for the rest.

    Args:
        path: A ``torch.save`` file (zip or legacy format).

    Returns:
        The unpickled object; objects of classes the unpickler does not allow are ``PickledGlobal`` instances.

    Raises:
        As ``torch.load`` for unreadable files (``RuntimeError``, ``EOFError``, ``pickle.UnpicklingError``, ...).

    Examples:
        >>> ckpt = safe_torch_load("finetuned.pth")  # doctest: +SKIP
    """
    return torch.load(path, map_location="cpu", weights_only=False, pickle_module=restricted_pickle)


def placeholders(obj: Any, limit: int = 10_000) -> list[str]:
    """Sorted names of the ``PickledGlobal`` placeholders inside ``obj`` (containers searched, tensors skipped).

    Examples:
        >>> placeholders({"meta": {"hub": placeholder_class("mmengine.logging", "MessageHub")()}})
        ['mmengine.logging.MessageHub']
    """
    found, stack, seen = set(), [obj], 0
    while stack and seen < limit:
        x = stack.pop()
        seen += 1
        if isinstance(x, PickledGlobal) or (isinstance(x, type) and issubclass(x, PickledGlobal)):
            found.add(f"{x.pickled_module}.{x.pickled_qualname}")
            if isinstance(x, PickledGlobal):
                stack.extend((*x.args, x.state, *x.items))
        elif isinstance(x, dict):
            stack.extend(x.values())
        elif isinstance(x, (list, tuple, set, frozenset)):
            stack.extend(x)
    return sorted(found)


def is_placeholder(obj: Any) -> bool:
    """Whether ``obj`` is a ``PickledGlobal`` placeholder (instance or class)."""
    return isinstance(obj, PickledGlobal) or (isinstance(obj, type) and issubclass(obj, PickledGlobal))


__all__ = ["PickledGlobal", "RestrictedUnpickler", "is_placeholder", "placeholder_class", "placeholders",
           "restricted_pickle", "safe_torch_load"]

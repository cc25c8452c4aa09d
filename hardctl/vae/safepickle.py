"""Read one state dict out of a torch checkpoint without ever running code from the file.

Official RQ-VAE ``model.pt`` files hold, next to ``state_dict``, the discriminator, the optimiser and a
scheduler object of a custom class, so ``torch.load(weights_only=True)`` may refuse them, and
``weights_only=False`` would let the pickle call anything (``os.system`` included). The fallback here
unpickles ``data.pkl`` from the zip with a restricted unpickler:

* ``find_class`` hands out the real object only for a short allow-list (tensor rebuild functions, replaced
  by our own that just record their arguments; ``collections.OrderedDict``; the storage type names, mapped to
  dtypes; ``torch.Size``). Every other global becomes an inert placeholder class whose construction,
  ``__setstate__``, item assignment and calls only record their arguments.
* ``persistent_load`` returns a lazy reference to the zip record ``data/<key>`` (the torch zip format's
  ``('storage', storage_type, key, location, numel)``); only storages of tensors under the requested key are
  ever read, so the optimiser's tensors cost no memory.

Nothing from the file is imported or called, so a malicious pickle can at worst make loading fail.
"""

from __future__ import annotations

import collections
import pickle
import sys
import zipfile
from pathlib import Path
from typing import Any

import torch

from hardctl.errors import UsageError

__all__ = ["load_state_dict_only"]

_STORAGE_DTYPES = {
    "DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool, "ComplexFloatStorage": torch.complex64, "ComplexDoubleStorage": torch.complex128,
    "UntypedStorage": torch.uint8,
}
_DTYPE_NAMES = {"float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool"}


class _Inert:
    """Stands in for any class or function the pickle names that is not allow-listed: whatever the pickle
    does with it (call, construct, set state, fill it like a list or dict) is recorded, never executed."""

    origin = "?"

    def __init__(self, *args: Any, **kwargs: Any):
        self.__dict__["_args"], self.__dict__["_kwargs"], self.__dict__["_items"] = args, kwargs, []

    def __call__(self, *args: Any, **kwargs: Any) -> "_Inert":
        return _Inert(*args, **kwargs)

    def __setstate__(self, state: Any) -> None:
        self.__dict__["_state"] = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self._items.append((key, value))

    def __setattr__(self, name: str, value: Any) -> None:
        self._items.append((name, value))

    def append(self, value: Any) -> None:
        self._items.append(value)

    def extend(self, values: Any) -> None:
        self._items.append(values)

    def __repr__(self) -> str:
        return f"<inert {self.origin}>"


class _StorageType:
    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


class _StorageRef:
    """A storage record in the zip, read only if a tensor under the requested key uses it."""

    def __init__(self, reader: "_ZipReader", key: str, dtype: torch.dtype, numel: int):
        self.reader, self.key, self.dtype, self.numel = reader, key, dtype, numel


class _TensorRef:
    def __init__(self, storage: Any, offset: Any, size: Any, stride: Any):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored) -> _TensorRef:
    # stands in for torch._utils._rebuild_tensor(_v2): (storage, offset, size, stride, requires_grad, hooks, …)
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, *_ignored):
    # torch._utils._rebuild_parameter(_with_state): a Parameter is its data here
    return data


def _rebuild_from_type_v2(func, new_type, args, state):
    # torch._tensor._rebuild_from_type_v2: only our own rebuild functions are ever called
    if func in (_rebuild_tensor, _rebuild_parameter) and isinstance(args, tuple):
        return func(*args)
    return _Inert(func, new_type, args, state)


_ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch", "Size"): torch.Size,
}


class _ZipReader:
    def __init__(self, path: Path, archive: zipfile.ZipFile, prefix: str):
        self.path, self.archive, self.prefix = path, archive, prefix
        self.swap = False
        order = prefix + "byteorder"
        if order in archive.namelist():
            self.swap = archive.read(order).decode() != sys.byteorder
        self.cache: dict[str, torch.Tensor] = {}

    def storage(self, ref: _StorageRef) -> torch.Tensor:
        """The record as a flat tensor of its dtype (shared between tensors that view the same storage)."""
        if ref.key not in self.cache:
            try:
                raw = bytearray(self.archive.read(f"{self.prefix}data/{ref.key}"))
            except KeyError:
                raise UsageError(f"{self.path} is damaged: the storage record data/{ref.key} is missing") from None
            flat = torch.frombuffer(raw, dtype=torch.uint8) if raw else torch.empty(0, dtype=torch.uint8)
            size = torch.empty(0, dtype=ref.dtype).element_size()
            if self.swap and size > 1:
                flat = flat.reshape(-1, size).flip(1).reshape(-1)
            if flat.numel() != ref.numel * size:
                raise UsageError(f"{self.path} is damaged: data/{ref.key} has {flat.numel()} bytes, "
                                 f"expected {ref.numel * size}")
            self.cache[ref.key] = flat.view(ref.dtype)
        return self.cache[ref.key]


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, reader: _ZipReader):
        super().__init__(file)
        self.reader = reader

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if module == "torch" and name in _DTYPE_NAMES:
            return getattr(torch, name)
        return type(f"Inert_{name}", (_Inert,), {"origin": f"{module}.{name}"})

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] in ("storage", b"storage")):
            raise pickle.UnpicklingError(f"unsupported persistent id {str(pid)[:60]}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType) or not isinstance(numel, int):
            raise pickle.UnpicklingError("malformed storage reference")
        key = key.decode() if isinstance(key, bytes) else str(key)
        return _StorageRef(self.reader, key, storage_type.dtype, numel)


def _materialise(ref: Any, name: str, path: Path) -> torch.Tensor:
    if isinstance(ref, torch.Tensor):
        return ref
    if not isinstance(ref, _TensorRef) or not isinstance(ref.storage, _StorageRef):
        raise UsageError(f"{path}: entry {name!r} is not a tensor")
    if not all(isinstance(v, int) for v in (ref.offset, *ref.size, *ref.stride)):
        raise UsageError(f"{path}: entry {name!r} has a malformed tensor header")
    flat = ref.storage.reader.storage(ref.storage)
    try:  # as_strided checks the view against the storage's size
        return flat.as_strided(tuple(ref.size), tuple(ref.stride), ref.offset).clone()
    except RuntimeError as exc:
        raise UsageError(f"{path}: entry {name!r} does not fit its storage ({str(exc).splitlines()[0]})") from None


def _restricted_load(path: Path, archive: zipfile.ZipFile) -> tuple[Any, _ZipReader]:
    pickles = [n for n in archive.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
    if not pickles:
        raise UsageError(f"{path} is not a torch checkpoint: the zip has no <archive>/data.pkl")
    reader = _ZipReader(path, archive, pickles[0][: -len("data.pkl")])
    with archive.open(pickles[0]) as data:
        try:
            return _RestrictedUnpickler(data, reader).load(), reader
        except Exception as exc:  # whatever a malformed or hostile pickle provokes in the recorders
            raise UsageError(f"{path}: cannot unpickle its data.pkl safely ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else 'no detail'})") from None


def load_state_dict_only(path: str | Path, key: str = "state_dict") -> dict[str, torch.Tensor]:
    """The str→Tensor mapping stored under ``key`` in a ``torch.save`` zip file, on the CPU; nothing in the
    file is executed (``torch.load(weights_only=True)`` first, the restricted unpickler if it refuses).
    One-line UsageError for a missing file, a file that is not a torch zip, or a missing key."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"checkpoint {path} does not exist")
    if not zipfile.is_zipfile(path):
        raise UsageError(f"{path} is not a torch zip checkpoint (torch.save since torch 1.6 writes one)")
    try:
        return _extract(path, torch.load(path, map_location="cpu", weights_only=True, mmap=True), key, None)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError, ValueError):
        pass  # weights_only refused the custom classes (or the file): read it with the restricted unpickler
    with zipfile.ZipFile(path) as archive:
        top, reader = _restricted_load(path, archive)
        return _extract(path, top, key, reader)


def _extract(path: Path, top: Any, key: str, reader: _ZipReader | None) -> dict[str, torch.Tensor]:
    if not isinstance(top, dict):
        raise UsageError(f"{path} holds a {type(top).__name__}, not a dict with a {key!r} entry")
    if key not in top:
        found = ", ".join(repr(k) for k in list(top)[:12]) or "nothing"
        raise UsageError(f"{path} has no {key!r} entry (it has {found})")
    state = top[key]
    if not isinstance(state, dict):
        raise UsageError(f"{path}: {key!r} holds a {type(state).__name__}, not a state dict")
    out: dict[str, torch.Tensor] = {}
    for name, value in state.items():
        if not isinstance(name, str):
            raise UsageError(f"{path}: {key!r} has a non-string key {name!r}")
        out[name] = _materialise(value, name, path) if reader is not None else value
        if not isinstance(out[name], torch.Tensor):
            raise UsageError(f"{path}: entry {name!r} of {key!r} is a {type(value).__name__}, not a tensor")
    return out

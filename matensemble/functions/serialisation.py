"""Values to bytes and back: JSON for plain data, (cloud)pickle for everything else.

Plain data (``None``, booleans, 64-bit integers, finite floats, strings, lists and dicts with
string keys) is written as JSON, so a human or another language can read a task's arguments
and result. Anything else (numpy arrays, dataclasses, tuples, sets, ...) is pickled with
cloudpickle, which also carries functions defined in ``__main__``, notebooks and closures.

References to other calls (``TaskRef``) inside pickled arguments become *persistent ids*:
the driver collects them as dependency edges and the worker replaces each by the value of that
call, wherever it sits (lists, dicts, tuples, dataclass fields).
"""

from __future__ import annotations

import io
import sys

TYPE_CHECKING = False  # not from typing: the worker imports this module, and starts faster
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, Literal

    Format = Literal["json", "pickle"]

__all__ = [
    "REF_TAG",
    "Format",
    "decode",
    "describe_function",
    "dump_json",
    "encode_arguments",
    "encode_value",
    "fingerprint",
    "load_json",
    "load_pickle",
    "unpicklable_path",
]

REF_TAG = "matensemble.ref"
_MAX_DEPTH = 64
_INT_RANGE = (-(2**63), 2**64 - 1)

# JSON through the ``_json`` accelerator itself: the ``json`` package compiles regular
# expressions when imported (``re`` and ``enum`` with it), about 5 ms of every cold call's
# start. Only plain data (``is_plain``) is encoded here; where ``_json`` is missing or differs,
# the ``json`` package does the work.
_json_encode: Callable[[object], str] | None = None
_json_scan: Callable[[str, int], tuple[Any, int]] | None = None


def _json_codec() -> None:
    global _json_encode, _json_scan
    try:
        import _json

        class _Context:  # what ``_json.make_scanner`` reads off a JSONDecoder
            strict = True
            object_hook = None
            object_pairs_hook = None
            parse_float = float
            parse_int = int
            parse_constant = float  # NaN, Infinity, -Infinity, as json.loads reads them

        encoder = _json.make_encoder(
            None, _not_json, _json.encode_basestring_ascii, None, ":", ",", False, False, False
        )

        def encode(value: object) -> str:
            return "".join(encoder(value, 0))

        if encode([1.5, "\u00e9", None]) != '[1.5,"\\u00e9",null]':  # not json.dumps' output
            raise ValueError("an unexpected _json module")
        _json_encode, _json_scan = encode, _json.make_scanner(_Context())  # type: ignore[arg-type]
    except Exception:  # an interpreter without ``_json``, or another version of it
        import json

        def encode_slowly(value: object) -> str:
            return json.dumps(value, separators=(",", ":"), allow_nan=False)

        _json_encode, _json_scan = encode_slowly, json.JSONDecoder().raw_decode


def _not_json(value: object) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def dump_json(value: object) -> bytes:
    """``value`` (plain data) as compact JSON, exactly as ``json.dumps`` writes it."""
    if _json_encode is None:
        _json_codec()
        assert _json_encode is not None
    return _json_encode(value).encode()


def load_json(data: bytes | str) -> Any:
    """The value of a JSON document (raises ``ValueError`` if it is not one)."""
    if _json_scan is None:
        _json_codec()
        assert _json_scan is not None
    text = data.decode() if isinstance(data, bytes) else data
    start = len(text) - len(text.lstrip(" \t\n\r"))
    try:
        value, end = _json_scan(text, start)
    except StopIteration:
        end = -1
    if end < 0 or text[end:].strip(" \t\n\r"):
        import json  # for its error message

        return json.loads(text)
    return value


def is_plain(value: object, depth: int = 0) -> bool:
    """Whether ``value`` survives a JSON round trip unchanged (same types, same values)."""
    if depth > _MAX_DEPTH:
        return False
    kind = type(value)
    if value is None or kind is bool or kind is str:
        return True
    if kind is int:
        return _INT_RANGE[0] <= value <= _INT_RANGE[1]  # type: ignore[operator]
    if kind is float:
        difference: float = value - value  # type: ignore[operator]
        return difference == 0.0  # finite (``math.isfinite`` would cost an import)
    if kind is list:
        return all(is_plain(item, depth + 1) for item in value)  # type: ignore[attr-defined]
    if kind is dict:
        return all(
            type(k) is str and is_plain(v, depth + 1)
            for k, v in value.items()  # type: ignore[attr-defined]
        )
    return False


def _cloudpickle(value: object, ref_type: type | None = None) -> tuple[bytes, list[str]]:
    """Pickle with cloudpickle (imported here: a worker with a plain result never needs it);
    each ``ref_type`` instance inside becomes a persistent id, and its id is collected."""
    import pickle

    import cloudpickle

    refs: list[str] = []

    class _Pickler(cloudpickle.Pickler):  # type: ignore[misc]
        def persistent_id(self, obj: object) -> tuple[str, str] | None:
            if ref_type is not None and type(obj) is ref_type:
                task_id: str = obj.id  # type: ignore[attr-defined]
                refs.append(task_id)
                return (REF_TAG, task_id)
            return None

    buffer = io.BytesIO()
    _Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(value)
    return buffer.getvalue(), refs


def encode_value(value: object) -> tuple[Format, bytes]:
    """Encode a result. Raises what pickle raises for an unpicklable value.

    The standard pickler comes first: importing cloudpickle costs a cold worker about 30 ms,
    and only values that hold functions or classes defined in ``__main__`` or closures need it.
    """
    if is_plain(value):
        return "json", dump_json(value)
    try:
        return "pickle", _stdlib_pickle().dumps(value, protocol=-1)  # -1: the highest
    except Exception:
        return "pickle", _cloudpickle(value)[0]


def encode_arguments(
    args: tuple[Any, ...], kwargs: dict[str, Any], ref_type: type
) -> tuple[Format, bytes, list[str]]:
    """Encode ``[args, kwargs]``; return the format, the bytes and the ids of nested refs."""
    payload = [list(args), kwargs]
    if is_plain(payload):
        return "json", dump_json(payload), []
    data, refs = _cloudpickle((args, kwargs), ref_type)
    return "pickle", data, list(dict.fromkeys(refs))


def _stdlib_pickle() -> Any:
    """The C pickler itself: the ``pickle`` module around it imports ``re`` (5 ms of a cold
    worker's start); an interpreter without ``_pickle`` gets ``pickle``."""
    try:
        import _pickle
    except ImportError:
        import pickle

        return pickle
    return _pickle


def load_pickle(data: bytes, resolve: Callable[[str], Any] | None = None) -> Any:
    """Unpickle ``data``; ``resolve(task_id)`` supplies the value of each nested reference."""
    pickle = _stdlib_pickle()

    class _Unpickler(pickle.Unpickler):  # type: ignore[name-defined,misc]
        def persistent_load(self, pid: Any) -> Any:
            if resolve is None or not (isinstance(pid, tuple) and pid[:1] == (REF_TAG,)):
                raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
            return resolve(pid[1])

    return _Unpickler(io.BytesIO(data)).load()


def decode(fmt: Format, data: bytes, resolve: Callable[[str], Any] | None = None) -> Any:
    if fmt == "json":
        return load_json(data)
    return load_pickle(data, resolve)


def unpicklable_path(value: object, path: str, ref_type: type | None = None) -> str:
    """The deepest path below ``path`` whose value cannot be pickled (``path`` if none deeper).

    Called only after pickling ``value`` failed, to tell the user *which* argument is at fault.
    """
    for child_path, child in _children(value, path):
        try:
            _cloudpickle(child, ref_type)
        except Exception:
            return unpicklable_path(child, child_path, ref_type)
    return path


def _children(value: object, path: str) -> list[tuple[str, object]]:
    if isinstance(value, list | tuple):
        return [(f"{path}[{i}]", item) for i, item in enumerate(value)]
    if isinstance(value, dict):
        return [(f"{path}[{k!r}]", v) for k, v in value.items()]
    import dataclasses  # only on the error path: the worker starts without it

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [(f"{path}.{f.name}", getattr(value, f.name)) for f in dataclasses.fields(value)]
    attributes = getattr(value, "__dict__", None)
    if isinstance(attributes, dict) and not callable(value):
        return [(f"{path}.{k}", v) for k, v in attributes.items()]
    return []


def describe_function(fn: Callable[..., Any]) -> tuple[str, bytes | None]:
    """``("module:qualname", None)`` for a function importable by that name, else the name and
    the function pickled by value (``__main__``, closures, lambdas, notebook cells, partials).

    Raises what cloudpickle raises when the function cannot be pickled by value either.
    """
    target = getattr(fn, "__matensemble_function__", fn)
    module = getattr(target, "__module__", None)
    qualname = getattr(target, "__qualname__", None)
    name = f"{module}:{qualname}" if module and qualname else repr(target)
    if module and qualname and module != "__main__" and "<" not in qualname:
        try:
            found: Any = _module(module)
            for part in qualname.split("."):
                found = getattr(found, part)
        except (ImportError, AttributeError):
            found = None
        if found is fn or getattr(found, "__matensemble_function__", found) is target:
            return name, None
    return name, _cloudpickle(target)[0]


def resolve_function(name: str) -> Callable[..., Any]:
    """The function ``module:qualname`` names (the plain function behind a ``@task``)."""
    module, _, qualname = name.partition(":")
    found: Any = _module(module)
    for part in qualname.split("."):
        found = getattr(found, part)
    return getattr(found, "__matensemble_function__", found)  # type: ignore[no-any-return]


def _module(name: str) -> Any:
    """The module ``name``, imported if need be (not ``importlib``: it costs a cold start)."""
    __import__(name)
    return sys.modules[name]


def fingerprint(function_name: str, fmt: Format, arguments: bytes) -> str:
    """What makes two calls "the same call" for a resume: the function's name and the bytes
    of its arguments (a function by value counts by its name, so editing its body does not
    make a recorded call new)."""
    import hashlib

    digest = hashlib.sha256()
    for part in (function_name.encode(), fmt.encode(), arguments):
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)
    return digest.hexdigest()

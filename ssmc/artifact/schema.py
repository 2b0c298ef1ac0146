"""The manifest's schema and the rules between its fields: the one validator both readers apply.

``runtime/c/manifest.schema.json`` (JSON Schema 2020-12, shipped with the package) is the definition.
This module validates with ``jsonschema`` against it; libssmc.so compiles the same file in and
interprets it (runtime/c/ssmc_runtime.cc, ``Schema``). The formats (``ssmc-*``) are asserted by both,
integers are JSON integers (``1.0`` is not one), every number is finite, and the messages are worded
alike, so the bad-manifest corpus (tests/manifest_corpus) gets the same verdict and names the same field
in C and in Python. The rules that relate two fields (the schema's ``x-ssmc-rules``) are
:func:`check_rules`, written out here and in C in the same order and words.

Reading the text (:func:`parse_manifest_text`) refuses what ``json.loads`` alone would accept but the C
reader does not: nesting deeper than 64 levels (a 100,000-deep manifest is an ``ArtifactError``, not a
``RecursionError``), NaN/Infinity and numbers that overflow to infinity.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from ssmc.errors import ArtifactError

__all__ = ["MAX_DEPTH", "SCHEMA_NAME", "check_rules", "parse_manifest_text", "schema", "schema_path",
           "validate_manifest"]

SCHEMA_NAME = "manifest.schema.json"
#: Containers may nest this deep (the C parser's bound: it recurses once per level).
MAX_DEPTH = 64
#: The C runtime allocates no tensor larger than this.
MAX_TENSOR_BYTES = 1 << 30
_ITEMSIZE = {"float32": 4, "float16": 2, "float64": 8, "int8": 1, "uint8": 1, "int32": 4, "int64": 8}
STATIC_ENTRY = "ssmc_static_step"


def schema_path() -> Path:
    """runtime/c/manifest.schema.json, found without importing ``ssmc.runtime``."""
    spec = importlib.util.find_spec("ssmc.runtime")
    if spec is None or not spec.submodule_search_locations:  # pragma: no cover - broken install
        raise ArtifactError("ssmc is installed without its runtime package (manifest schema missing)")
    return Path(next(iter(spec.submodule_search_locations))) / "c" / SCHEMA_NAME


@lru_cache(maxsize=1)
def schema() -> dict[str, Any]:
    """The manifest schema as a dict (read once)."""
    return json.loads(schema_path().read_text(encoding="utf-8"))


# -- the formats, as the C runtime asserts them -------------------------------------------------------

_CREATED = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(\.\d{1,6})?(Z|[+-](\d{2}):(\d{2}))?")


def _created_ok(s: str) -> bool:
    m = _CREATED.fullmatch(s)
    if m is None or not s.isascii():
        return False
    y, mo, d, h, mi, se = (int(m.group(i)) for i in range(1, 7))
    ok = 1 <= y and 1 <= mo <= 12 and 1 <= d <= 31 and h <= 23 and mi <= 59 and se <= 59
    if m.group(9) is not None:
        ok = ok and int(m.group(9)) <= 23 and int(m.group(10)) <= 59
    return ok


def _file_name_ok(s: str) -> bool:
    if not s or len(s) > 1024 or "\\" in s or "\0" in s or s in ("manifest.json", "manifest.sig"):
        return False
    return all(part and not part.startswith(".") for part in s.split("/"))


def _tensor_name_ok(s: str) -> bool:
    return 0 < len(s) <= 256 and not any(c in s for c in "/\\\0")


#: format name -> (check, what the value must be): the sentences of FormatError in ssmc_runtime.cc.
FORMATS: dict[str, tuple[Any, str]] = {
    "ssmc-text": (lambda s: "\0" not in s, "must not contain NUL characters"),
    "ssmc-sha256": (lambda s: len(s) == 64 and all(c in "0123456789abcdef" for c in s), "must be 64 lowercase hex digits"),
    "ssmc-tensor-name": (_tensor_name_ok, "is not a valid tensor name (1 to 256 characters, no '/', '\\' or NUL)"),
    "ssmc-file-name": (_file_name_ok,
                       "is not a valid artifact file name (a relative path without '..', hidden parts or backslashes)"),
    "ssmc-created": (_created_ok, "is not an ISO 8601 time (YYYY-MM-DDTHH:MM:SS[.ffffff][Z|+HH:MM])"),
}


@lru_cache(maxsize=1)
def _validator() -> Any:
    import jsonschema
    from jsonschema import Draft202012Validator

    def is_integer(_checker: Any, v: Any) -> bool:
        # the C reader's integers: no fraction or exponent (3, never 3.0) and within int64 (beyond, a number)
        return isinstance(v, int) and not isinstance(v, bool) and -(1 << 63) <= v < (1 << 63)

    checker = jsonschema.FormatChecker(formats=())
    for name, (check, _what) in FORMATS.items():
        checker.checks(name)(lambda v, check=check: not isinstance(v, str) or check(v))
    cls = jsonschema.validators.extend(
        Draft202012Validator, type_checker=Draft202012Validator.TYPE_CHECKER.redefine("integer", is_integer))
    cls.check_schema(schema())
    return cls(schema(), format_checker=checker)


# -- messages, as the C runtime words them ----------------------------------------------------------------

_TYPE_WORDS = {"object": "an object", "array": "a list", "string": "a string", "integer": "an integer",
               "number": "a number", "boolean": "true or false", "null": "null"}


def _path(parts: Any) -> str:
    out = ""
    for p in parts:
        out = f"{out}[{p}]" if isinstance(p, int) else (f"{out}.{p}" if out else str(p))
    return out


def _num(v: Any) -> str:
    return str(v) if isinstance(v, int) else repr(float(v))


def _one_line(s: str, n: int = 200) -> str:
    s = s if len(s) <= n else s[:n] + "..."
    return "".join(" " if ord(c) < 0x20 else c for c in s)


def _reason(e: Any) -> str:
    """What the value must be, for one jsonschema error (the sentences of Schema::Check in C)."""
    kw, want, inst = e.validator, e.validator_value, e.instance
    if kw == "type":
        types = want if isinstance(want, list) else [want]
        return "must be " + " or ".join(_TYPE_WORDS[t] for t in types)
    if kw == "const":
        return f"must be {want}"
    if kw == "enum":
        return "must be one of " + ", ".join(str(x) for x in want)
    if kw == "format":
        return FORMATS[want][1]
    if kw == "minLength":
        return "must not be empty" if want == 1 else f"must have at least {want} characters"
    if kw == "maxLength":
        return f"must have at most {want} characters"
    if kw in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        op = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}[kw]
        return f"must be {op} {_num(want)}"
    if kw == "minItems":
        return f"must have at least {want} items"
    if kw == "maxItems":
        return f"must have at most {want} items"
    if kw == "maxProperties":
        return f"must have at most {want} fields"
    if kw == "required":
        return "missing field(s) " + ", ".join(r for r in want if isinstance(inst, Mapping) and r not in inst)
    if kw == "additionalProperties":
        props = set((e.schema or {}).get("properties", {}))
        unknown = sorted(k for k in inst if k not in props)
        return "unknown field(s) " + ", ".join(_one_line(k) for k in unknown)
    return e.message  # pragma: no cover - the schema uses no other keyword (the C interpreter refuses any)


def _message(e: Any, where: str) -> str:
    path = _path(e.absolute_path)
    if "propertyNames" in e.absolute_schema_path:
        reason = f"name {_one_line(str(e.instance))} {_reason(e)}"
    else:
        reason = _reason(e)
        if e.validator == "additionalProperties" and not path:
            reason += " (put extras under 'extra')"
    return f"{where}: {reason}" if not path else f"{where}: field {path}: {reason}"


def validate_manifest(d: Any, where: str = "manifest.json") -> None:
    """Check ``d`` against the schema, then :func:`check_rules`; the first problem raises ``ArtifactError``."""
    import jsonschema

    errors = list(_validator().iter_errors(d))
    if errors:
        raise ArtifactError(_message(jsonschema.exceptions.best_match(errors), where))
    check_rules(d, where)


def check_rules(d: Mapping[str, Any], where: str = "manifest.json") -> None:
    """The rules between fields (the schema's ``x-ssmc-rules``), for a manifest that passed the schema;
    the order and the words of CheckRules in runtime/c/ssmc_runtime.cc."""
    def bad(field: str, what: str) -> ArtifactError:
        return ArtifactError(f"{where}: field {field}: {what}")

    obs_dim = d["obs_dim"]
    for key in ("obs_mean", "obs_std"):
        if len(d[key]) != obs_dim:
            raise bad(key, f"must hold obs_dim ({obs_dim}) numbers, has {len(d[key])}")
    names = [t["name"] for g in ("inputs", "outputs", "state") for t in d[g]]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ArtifactError(f"{where}: tensor name(s) used twice across inputs/outputs/state: {', '.join(dup)}")
    sizes: dict[str, list[int]] = {}
    for group in ("inputs", "outputs", "state"):
        sizes[group] = []
        for i, t in enumerate(d[group]):
            n = _ITEMSIZE[t["dtype"]] * math.prod(t["shape"])
            if n > MAX_TENSOR_BYTES:
                raise bad(f"{group}[{i}]", f"tensor {_one_line(t['name'])} is larger than 1 GiB")
            sizes[group].append(n)
    if d["state_bytes"] != sum(sizes["state"]):
        raise bad("state_bytes", f"{d['state_bytes']} but the state tensors hold {sum(sizes['state'])} bytes")
    for key in ("library", "params", "reference"):
        v = d[key]
        if v is not None and v not in d["files"]:
            raise bad(key, f"names {_one_line(v)}, which is not listed in files")
    target = d["target"]
    if d["executor"] == "static":
        if d["entry"] != STATIC_ENTRY:
            raise bad("entry", f"a static artifact's entry is {STATIC_ENTRY}, not {_one_line(d['entry'])}")
        if target["device"] != "cpu":
            raise bad("executor", f"static steps run on CPUs only, target '{_one_line(target['name'])}' is {target['device']}")
    if d["precision"] not in target["precisions"]:
        raise bad("precision", f"{d['precision']} is not supported by target '{_one_line(target['name'])}'")
    if target["device"] != "cpu" and target["tvm_host"] is None:
        raise bad("target", "a device target needs a tvm_host")
    budget = target["budget"]
    if float(budget["step_latency_us"]) > 1e6 / float(budget["control_rate_hz"]):
        raise bad("target.budget", "step_latency_us exceeds the control period")


# -- reading the text ---------------------------------------------------------------------------------------

class _Overflow(ValueError):
    pass


def _finite(token: str) -> float:
    v = float(token)
    if not math.isfinite(v):
        raise _Overflow(token)
    return v


class _Constant(ValueError):
    pass


def _no_constants(token: str) -> Any:
    raise _Constant(token)


_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.S)
#: strings (skipped), numbers, and the constants json.loads would take
_VALUES = re.compile(r'"(?:[^"\\]|\\.)*"|-?(?:Infinity|NaN)|-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?', re.S)
#: json's messages in the C parser's words
_JSON_WORDS = {"Expecting value": "expecting a value",
               "Expecting property name enclosed in double quotes": "expecting a property name in double quotes",
               "Expecting ':' delimiter": "expecting ':' delimiter", "Expecting ',' delimiter": "expecting ',' delimiter",
               "Extra data": "extra data after the value", "Invalid \\escape": "invalid \\escape",
               "Invalid \\uXXXX escape": "invalid \\uXXXX escape",
               "Invalid control character at": "invalid control character in a string",
               "Unterminated string starting at": "unterminated string"}


def _line_col(text: str, at: int) -> str:
    line = text.count("\n", 0, at) + 1
    return f"line {line} column {at - (text.rfind(chr(10), 0, at) + 1) + 1}"


def _bad_value_at(text: str) -> tuple[str, int] | None:
    """The first NaN/Infinity (where a value was expected) or overflowing number outside strings."""
    for m in _VALUES.finditer(text):
        tok = m.group()
        if tok[0] == '"':
            continue
        if tok.lstrip("-")[0] in "IN":
            return "expecting a value", m.start() + (tok[0] == "-")
        if not math.isfinite(float(tok)):
            return "number out of range", m.start()
    return None


def _too_deep_at(text: str) -> tuple[int, int] | None:
    """(line, column) of the first bracket that opens level MAX_DEPTH + 1, strings skipped; None if none."""
    depth = 0
    for m in _TOKENS.finditer(text):
        c = m.group()[0]
        if c in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                start = m.start()
                line = text.count("\n", 0, start) + 1
                return line, start - (text.rfind("\n", 0, start) + 1) + 1
        elif c in "]}":
            depth -= 1
    return None


def _depth(obj: Any) -> int:
    """Nesting depth of containers (an object or list is 1), iteratively."""
    best, todo = 0, [(obj, 1)]
    while todo:
        v, level = todo.pop()
        if isinstance(v, dict):
            best = max(best, level)
            todo.extend((x, level + 1) for x in v.values())
        elif isinstance(v, list):
            best = max(best, level)
            todo.extend((x, level + 1) for x in v)
    return best


def parse_manifest_text(raw: bytes, where: str) -> Any:
    """``manifest.json``'s bytes as JSON, read as the C runtime reads them (see the module docstring)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ArtifactError(f"{where}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    try:
        d = json.loads(text, parse_float=_finite, parse_constant=_no_constants)
    except RecursionError:
        d = None
    except (_Overflow, _Constant):
        bad = _bad_value_at(text)
        what, at = bad if bad is not None else ("expecting a value", 0)
        raise ArtifactError(f"{where}: not valid JSON ({what} at {_line_col(text, at)})") from None
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{where}: not valid JSON ({_JSON_WORDS.get(e.msg, e.msg)} at line {e.lineno} "
                            f"column {e.colno})") from None
    except ValueError as e:  # an integer of more than 4300 digits
        raise ArtifactError(f"{where}: not valid JSON ({_one_line(str(e), 80)})") from None
    if d is None or _depth(d) > MAX_DEPTH:
        at = _too_deep_at(text)
        pos = f" at line {at[0]} column {at[1]}" if at else ""
        raise ArtifactError(f"{where}: not valid JSON (nested deeper than {MAX_DEPTH} levels{pos})") from None
    return d

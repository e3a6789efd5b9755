"""Lambda-style event filtering of DynamoDB stream records.

The input is what Lambda's event source mapping takes as ``FilterCriteria``::

    {"Filters": [{"Pattern": "{\\"eventName\\": [\\"INSERT\\"]}"}]}

or, for convenience, a JSON list of pattern objects (or of ``{"Pattern": ...}``
filters), or one pattern object; a ``Pattern`` may also be the object itself
rather than a JSON string.  ``@path`` reads any of those from a file.  At most 5 patterns (Lambda's limit);
a record passes when any pattern matches it.

A pattern is matched against the record's wire JSON (``Record.raw``), typed
values included, with the EventBridge content-filtering rules Lambda applies:

* an object descends into the record; every field of it must match (AND);
* a field's array lists conditions; one matching condition is enough (OR);
* conditions: ``"x"``, ``5``, ``true``, ``null`` (exact; numbers compare by
  value), ``{"prefix": s}``, ``{"suffix": s}``, ``{"equals-ignore-case": s}``,
  ``{"exists": bool}``, ``{"numeric": [op, n]}`` or ``[">"|">=", n, "<"|"<=", m]``,
  ``{"anything-but": v | [v, ...] | {"prefix"|"suffix"|"equals-ignore-case": s}}``;
* a record field holding an array matches when any element matches; an object
  pattern applied to an array matches when one element matches all of it;
* conditions apply to leaf values (strings, numbers, booleans, null) only.  As
  in Lambda, ``{"exists": true}`` on a field whose value is an object (such as
  ``NewImage.status``, which is ``{"S": ...}``) never matches and
  ``{"exists": false}`` always does: test the typed key instead,
  ``{"status": {"S": [{"exists": false}]}}``;
* DynamoDB numbers travel as strings (``{"N": "12"}``); under an ``N`` or
  ``NS`` key, numeric conditions and number literals compare those strings as
  decimal numbers.

Patterns are compiled once into closures; :meth:`FilterCriteria.matches` does
not look at the pattern JSON again.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from leaser.errors import ConfigError

__all__ = ["MAX_PATTERNS", "SETTING", "FilterCriteria"]

SETTING = "filter_patterns (--filter-patterns / SHARDLEASE_FILTER_PATTERNS)"
MAX_PATTERNS = 5

_NUMERIC_KEYS = frozenset({"N", "NS"})
_OPERATORS = ("prefix", "suffix", "equals-ignore-case", "exists", "numeric", "anything-but")
_LOWER_OPS = frozenset({">", ">="})
_UPPER_OPS = frozenset({"<", "<="})
_ALL_OPS = _LOWER_OPS | _UPPER_OPS | {"="}

_ABSENT: Any = object()  # a field the record does not have

ValueTest = Callable[[Any], bool]  # one condition, one leaf value
LeafTest = Callable[[Any], bool]  # a field's condition array, the field's raw value (or _ABSENT)
NodeTest = Callable[[Any], bool]  # a pattern object, the record node it applies to


class _Invalid(Exception):
    """A problem in one pattern; turned into a ConfigError with the pattern's number."""

    def __init__(self, where: str, problem: str, fix: str) -> None:
        super().__init__(problem)
        self.where = where
        self.problem = problem
        self.fix = fix


def _fail(problem: str, fix: str) -> ConfigError:
    """The error for a bad value; always one line, whatever the user's keys or file names hold."""
    return ConfigError(SETTING, " ".join(problem.splitlines()), fix)


# ---------------------------------------------------------------------------
# Values.


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | Decimal) and not isinstance(value, bool)


def _decimal(value: Any) -> Decimal | None:
    """``value`` as a finite Decimal, or None if it is not a number."""
    if isinstance(value, bool):
        return None
    try:
        if isinstance(value, int | Decimal):
            number = Decimal(value)
        elif isinstance(value, float):
            number = Decimal(repr(value))
        else:
            return None
    except (InvalidOperation, ValueError):
        return None
    return number if number.is_finite() else None


def _number_of(numeric_strings: bool) -> Callable[[Any], Decimal | None]:
    """How a leaf value is read as a number: JSON numbers always, strings only under N/NS."""
    if not numeric_strings:
        return _decimal

    def number(value: Any) -> Decimal | None:
        if isinstance(value, str):
            try:
                parsed = Decimal(value)
            except InvalidOperation:
                return None
            return parsed if parsed.is_finite() else None
        return _decimal(value)

    return number


def _leaf_values(value: Any) -> Iterator[Any]:
    """The scalar values of a record field: itself, or the scalars of an array (nested arrays flattened)."""
    if isinstance(value, list):
        for item in value:
            yield from _leaf_values(item)
    elif value is not _ABSENT and not isinstance(value, dict):
        yield value


def _objects(value: list[Any]) -> list[Mapping[str, Any]]:
    """The objects in a record array (nested arrays flattened)."""
    found: list[Mapping[str, Any]] = []
    for item in value:
        if isinstance(item, dict):
            found.append(item)
        elif isinstance(item, list):
            found.extend(_objects(item))
    return found


# ---------------------------------------------------------------------------
# Compiling one condition.


def _compile_exact(literals: list[Any], number: Callable[[Any], Decimal | None], where: str) -> ValueTest:
    """Equality with any of ``literals`` (strings, numbers, booleans, null)."""
    strings: set[str] = set()
    numbers: set[Decimal] = set()
    booleans: set[bool] = set()
    null = False
    for literal in literals:
        if isinstance(literal, str):
            strings.add(literal)
        elif isinstance(literal, bool):
            booleans.add(literal)
        elif literal is None:
            null = True
        else:
            parsed = _decimal(literal)
            if parsed is None:
                raise _Invalid(where, f"{literal!r} is not a finite number", "use a plain JSON number")
            numbers.add(parsed)
    frozen_strings = frozenset(strings)
    frozen_numbers = frozenset(numbers)
    frozen_booleans = frozenset(booleans)

    def test(value: Any) -> bool:
        if isinstance(value, bool):
            return value in frozen_booleans
        if value is None:
            return null
        if isinstance(value, str) and value in frozen_strings:
            return True
        if frozen_numbers:
            parsed = number(value)
            return parsed is not None and parsed in frozen_numbers
        return False

    return test


def _string_operand(operator: str, operand: Any, where: str) -> str:
    if not isinstance(operand, str):
        raise _Invalid(where, f"{operator!r} takes a string, got {json.dumps(operand)}",
                       f'write it like {{"{operator}": "abc"}}')
    return operand


def _compile_string_op(operator: str, operand: Any, where: str) -> ValueTest:
    text = _string_operand(operator, operand, where)
    if operator == "prefix":
        return lambda value: isinstance(value, str) and value.startswith(text)
    if operator == "suffix":
        return lambda value: isinstance(value, str) and value.endswith(text)
    folded = text.casefold()
    return lambda value: isinstance(value, str) and value.casefold() == folded


def _compile_numeric(spec: Any, number: Callable[[Any], Decimal | None], where: str) -> ValueTest:
    fix = 'write it like {"numeric": [">", 0, "<=", 5]} or {"numeric": ["=", 3]}'
    if not isinstance(spec, list) or len(spec) not in (2, 4):
        raise _Invalid(where, f"numeric takes [op, number] or [op, number, op, number], got {json.dumps(spec)}", fix)
    ops: list[str] = []
    bounds: list[Decimal] = []
    for op, bound in zip(spec[::2], spec[1::2], strict=True):
        if not isinstance(op, str) or op not in _ALL_OPS:
            raise _Invalid(where, f"numeric operator {json.dumps(op)} is not one of =, <, <=, >, >=", fix)
        parsed = _decimal(bound) if _is_number(bound) else None
        if parsed is None:
            raise _Invalid(where, f"numeric bound {json.dumps(bound)} is not a number", fix)
        ops.append(op)
        bounds.append(parsed)
    if len(ops) == 2 and not (ops[0] in _LOWER_OPS and ops[1] in _UPPER_OPS):
        raise _Invalid(where, f"numeric range {json.dumps(spec)} must be a lower bound (> or >=) "
                       "then an upper bound (< or <=)", fix)

    def compare(op: str, bound: Decimal) -> Callable[[Decimal], bool]:
        if op == "=":
            return lambda n: n == bound
        if op == ">":
            return lambda n: n > bound
        if op == ">=":
            return lambda n: n >= bound
        if op == "<":
            return lambda n: n < bound
        return lambda n: n <= bound

    checks = [compare(op, bound) for op, bound in zip(ops, bounds, strict=True)]

    def test(value: Any) -> bool:
        parsed = number(value)
        return parsed is not None and all(check(parsed) for check in checks)

    return test


def _compile_anything_but(operand: Any, number: Callable[[Any], Decimal | None], where: str) -> ValueTest:
    fix = 'write it like {"anything-but": ["a", "b"]}, {"anything-but": "a"} or {"anything-but": {"prefix": "x"}}'
    if isinstance(operand, dict):
        if len(operand) != 1:
            raise _Invalid(where, f"anything-but takes one operator, got {json.dumps(operand)}", fix)
        ((operator, inner),) = operand.items()
        if operator not in ("prefix", "suffix", "equals-ignore-case"):
            raise _Invalid(where, f"anything-but does not take {operator!r}", fix)
        if operator == "equals-ignore-case" and isinstance(inner, list):
            if not inner:
                raise _Invalid(where, "anything-but equals-ignore-case has an empty array", fix)
            folded = frozenset(_string_operand(operator, item, where).casefold() for item in inner)
            return lambda value: isinstance(value, str) and value.casefold() not in folded
        positive = _compile_string_op(operator, inner, where)
        return lambda value: isinstance(value, str) and not positive(value)
    literals = operand if isinstance(operand, list) else [operand]
    if not literals:
        raise _Invalid(where, "anything-but has an empty array", fix)
    for literal in literals:
        if not (isinstance(literal, str) or _is_number(literal)):
            raise _Invalid(where, f"anything-but takes strings or numbers, got {json.dumps(literal)}", fix)
    excluded = _compile_exact(literals, number, where)
    return lambda value: not excluded(value)


# ---------------------------------------------------------------------------
# Compiling a field's condition array and a pattern object.


def _compile_leaf(conditions: list[Any], numeric_strings: bool, where: str) -> LeafTest:
    if not conditions:
        raise _Invalid(where, "has an empty array, which matches nothing", 'list at least one value, like ["INSERT"]')
    number = _number_of(numeric_strings)
    literals: list[Any] = []
    tests: list[ValueTest] = []
    exists: set[bool] = set()
    for condition in conditions:
        if condition is None or isinstance(condition, str | bool) or _is_number(condition):
            literals.append(condition)
            continue
        if isinstance(condition, list):
            raise _Invalid(where, f"has a nested array {json.dumps(condition)}", "list the values in one flat array")
        if not isinstance(condition, dict):
            raise _Invalid(where, f"has an unusable value {condition!r}", "use strings, numbers, true/false/null")
        if len(condition) != 1:
            raise _Invalid(where, f"condition {json.dumps(condition)} must have exactly one operator",
                           "put each operator in its own object in the array")
        ((operator, operand),) = condition.items()
        if operator in ("prefix", "suffix", "equals-ignore-case"):
            tests.append(_compile_string_op(operator, operand, where))
        elif operator == "numeric":
            tests.append(_compile_numeric(operand, number, where))
        elif operator == "anything-but":
            tests.append(_compile_anything_but(operand, number, where))
        elif operator == "exists":
            if not isinstance(operand, bool):
                raise _Invalid(where, f"exists takes true or false, got {json.dumps(operand)}",
                               'write {"exists": true} or {"exists": false}')
            exists.add(operand)
        else:
            raise _Invalid(where, f"unknown operator {operator!r}",
                           f"use one of {', '.join(_OPERATORS)}, or a plain value")
    if literals:
        tests.insert(0, _compile_exact(literals, number, where))
    must_exist = True in exists
    may_be_absent = False in exists

    if len(tests) == 1 and not exists:
        (only,) = tests

        def single(value: Any) -> bool:
            if isinstance(value, list):
                return any(only(item) for item in _leaf_values(value))
            if value is _ABSENT or isinstance(value, dict):
                return False
            return only(value)

        return single

    def leaf(value: Any) -> bool:
        if isinstance(value, list):
            values = list(_leaf_values(value))
        elif value is _ABSENT or isinstance(value, dict):
            values = []
        else:
            values = [value]
        if not values:
            return may_be_absent
        if must_exist:
            return True
        return any(test(item) for item in values for test in tests)

    return leaf


def _compile_object(pattern: Mapping[str, Any], where: str) -> NodeTest:
    if not pattern:
        raise _Invalid(where or "the pattern", "is an empty object, which matches every record",
                       "name at least one field, or leave the setting out to process every record")
    fields: list[tuple[str, LeafTest | NodeTest, bool]] = []
    for key, sub in pattern.items():
        path = f"{where}.{key}" if where else key
        if key.startswith("$"):
            raise _Invalid(path, f"{key!r} is not supported by Lambda event filtering",
                           "write alternatives as separate patterns (patterns are ORed)")
        if isinstance(sub, dict):
            fields.append((key, _compile_object(sub, path), True))
        elif isinstance(sub, list):
            fields.append((key, _compile_leaf(sub, key in _NUMERIC_KEYS, path), False))
        else:
            raise _Invalid(path, f"is {json.dumps(sub)}, not an array of conditions or an object",
                           f"wrap the value in an array, like {json.dumps({key: [sub]})}")

    def node_test(node: Any) -> bool:
        if not isinstance(node, dict):
            node = {}
        for key, test, nested in fields:
            value = node.get(key, _ABSENT)
            if nested and isinstance(value, list):
                candidates = _objects(value)
                if candidates:
                    if not any(test(candidate) for candidate in candidates):
                        return False
                    continue
            if not test(value):
                return False
        return True

    return node_test


# ---------------------------------------------------------------------------
# Input.


def _load_json(text: str, source: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise _fail(f"{source} is not valid JSON ({err.msg} at line {err.lineno} column {err.colno})",
                    'write JSON like {"Filters": [{"Pattern": "{\\"eventName\\": [\\"INSERT\\"]}"}]}') from None


def _read_text(text: str) -> tuple[str, str]:
    """The JSON text and a description of where it came from."""
    stripped = text.strip()
    if not stripped.startswith("@"):
        return stripped, "the value"
    name = stripped[1:].strip()
    if not name:
        raise _fail("'@' names no file", "write @/path/to/filters.json, or the JSON itself")
    path = Path(name).expanduser()
    try:
        return path.read_text(encoding="utf-8"), f"file {str(path)!r}"
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else type(err).__name__
        raise _fail(f"cannot read file {str(path)!r} ({reason})",
                    "point @ at a readable UTF-8 file with the filter JSON") from None


def _patterns_of(document: Any, source: str) -> list[dict[str, Any]]:
    """The pattern objects in any accepted shape of input."""
    if isinstance(document, dict) and "Filters" in document:
        if set(document) != {"Filters"}:
            extra = sorted(set(document) - {"Filters"})
            raise _fail(f"{source} has keys besides Filters: {', '.join(map(repr, extra))}",
                        'write {"Filters": [{"Pattern": "..."}]} only')
        filters = document["Filters"]
        if not isinstance(filters, list):
            raise _fail(f"Filters in {source} is not an array", 'write {"Filters": [{"Pattern": "..."}]}')
        items = filters
    elif isinstance(document, list):
        items = document
    elif isinstance(document, dict):
        items = [document]
    else:
        raise _fail(f"{source} is a JSON {type(document).__name__}, not filter criteria",
                    'write {"Filters": [{"Pattern": "..."}]}, a list of pattern objects, or one pattern object')
    if not items:
        raise _fail(f"{source} has no patterns", "add a pattern, or leave the setting out to process every record")
    if len(items) > MAX_PATTERNS:
        raise _fail(f"{source} has {len(items)} patterns; Lambda allows at most {MAX_PATTERNS}",
                    "merge patterns (a field's array already ORs its values) or drop some")
    patterns: list[dict[str, Any]] = []
    for number, item in enumerate(items, 1):
        if isinstance(item, dict) and len(item) == 1 and ("Pattern" in item or "pattern" in item):
            item = next(iter(item.values()))
            if isinstance(item, str):
                item = _load_json(item, f"Pattern {number} in {source}")
        if not isinstance(item, dict):
            raise _fail(f"pattern {number} in {source} is not a JSON object",
                        'write each pattern as an object, like {"eventName": ["INSERT"]}')
        patterns.append(item)
    return patterns


# ---------------------------------------------------------------------------
# The public class.


class FilterCriteria:
    """Up to 5 compiled patterns; a record passes when any of them matches."""

    __slots__ = ("_tests", "patterns")

    def __init__(self, patterns: list[dict[str, Any]], tests: list[NodeTest]) -> None:
        self.patterns = patterns
        self._tests = tuple(tests)

    @classmethod
    def parse(cls, text: str) -> FilterCriteria:
        """Filter criteria from ``--filter-patterns`` text: JSON, or ``@path`` of a JSON file.

        Raises :class:`ConfigError` (one line) for anything Lambda would refuse or that cannot be read.
        """
        body, source = _read_text(text)
        if not body.strip():
            raise _fail(f"{source} is empty", 'write JSON like {"Filters": [{"Pattern": "..."}]}')
        return cls.from_patterns(_patterns_of(_load_json(body, source), source))

    @classmethod
    def from_patterns(cls, patterns: list[dict[str, Any]]) -> FilterCriteria:
        """Filter criteria from pattern objects (already decoded JSON)."""
        if not isinstance(patterns, list) or not patterns:
            raise _fail("no patterns given", "add a pattern, or leave the setting out to process every record")
        if len(patterns) > MAX_PATTERNS:
            raise _fail(f"{len(patterns)} patterns given; Lambda allows at most {MAX_PATTERNS}",
                        "merge patterns (a field's array already ORs its values) or drop some")
        tests: list[NodeTest] = []
        for number, pattern in enumerate(patterns, 1):
            if not isinstance(pattern, dict):
                raise _fail(f"pattern {number} is not a JSON object",
                            'write each pattern as an object, like {"eventName": ["INSERT"]}')
            try:
                tests.append(_compile_object(pattern, ""))
            except _Invalid as err:
                raise _fail(f"pattern {number}: {err.where} {err.problem}", err.fix) from None
        return cls(list(patterns), tests)

    def matches(self, raw: Mapping[str, Any]) -> bool:
        """Whether the record (its wire JSON) matches any pattern."""
        if not isinstance(raw, dict):
            raw = dict(raw)
        return any(test(raw) for test in self._tests)

    def __len__(self) -> int:
        return len(self._tests)

    def __repr__(self) -> str:
        return f"FilterCriteria({json.dumps(self.patterns, default=str)})"

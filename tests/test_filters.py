"""Lambda-style event filtering (worker.handling.filters) on DynamoDB stream records."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from leaser.errors import ConfigError
from worker.handling.filters import SETTING, FilterCriteria


def record(event: str = "INSERT", new: dict[str, Any] | None = None, old: dict[str, Any] | None = None,
           keys: dict[str, Any] | None = None, **top: Any) -> dict[str, Any]:
    """A record's wire JSON, as DynamoDB Streams sends it."""
    ddb: dict[str, Any] = {
        "ApproximateCreationDateTime": 1678831218.0,
        "Keys": keys if keys is not None else {"CustomerName": {"S": "AnyCompany Industries"}},
        "SequenceNumber": "111",
        "SizeBytes": 26,
        "StreamViewType": "NEW_AND_OLD_IMAGES",
    }
    if new is not None:
        ddb["NewImage"] = new
    if old is not None:
        ddb["OldImage"] = old
    raw = {"eventID": "1", "eventName": event, "eventVersion": "1.1", "eventSource": "aws:dynamodb",
           "awsRegion": "us-east-1", "dynamodb": ddb}
    raw.update(top)
    return raw


ITEM: dict[str, Any] = {
    "CustomerName": {"S": "AnyCompany Industries"},
    "AccountManager": {"S": "Pat Candella"},
    "PaymentTerms": {"S": "60 days"},
    "status": {"S": "ACTIVE"},
    "amount": {"N": "42.50"},
    "quantity": {"N": "7"},
    "vip": {"BOOL": True},
    "deleted_at": {"NULL": True},
    "address": {"M": {"city": {"S": "Seattle"}, "zip": {"S": "98101"}}},
    "tags": {"SS": ["blue", "green"]},
    "scores": {"NS": ["1", "5", "10"]},
    "Organizations": {"L": [{"S": "Sales"}, {"S": "Marketing"}, {"S": "Support"}]},
    "lines": {"L": [{"M": {"sku": {"S": "A-1"}, "qty": {"N": "2"}}}, {"M": {"sku": {"S": "B-2"}, "qty": {"N": "9"}}}]},
}

INSERT = record("INSERT", new=ITEM)
MODIFY = record("MODIFY", new={**ITEM, "status": {"S": "CLOSED"}}, old=ITEM)
REMOVE = record("REMOVE", old=ITEM, keys={"CustomerName": {"S": "AnyCompany Industries"}})


def matches(pattern: Any, raw: dict[str, Any]) -> bool:
    return FilterCriteria.from_patterns([pattern]).matches(raw)


def new_image(**fields: Any) -> dict[str, Any]:
    return {"dynamodb": {"NewImage": fields}}


# ---------------------------------------------------------------------------
# The Lambda documentation's examples.


def test_doc_filter_on_table_key() -> None:
    criteria = FilterCriteria.parse(json.dumps({"Filters": [{"Pattern": json.dumps(
        {"dynamodb": {"Keys": {"CustomerName": {"S": ["AnyCompany Industries"]}}}})}]}))
    assert criteria.matches(INSERT)
    assert not criteria.matches(record(keys={"CustomerName": {"S": "Other"}}, new=ITEM))


def test_doc_filter_on_new_image_attribute_with_or() -> None:
    pattern = new_image(AccountManager={"S": ["Pat Candella", "Shirley Rodriguez"]})
    assert matches(pattern, INSERT)
    assert not matches(pattern, record(new={**ITEM, "AccountManager": {"S": "Someone Else"}}))
    assert not matches(pattern, REMOVE)  # REMOVE has no NewImage


def test_doc_event_name_and_status() -> None:
    pattern = {"eventName": ["INSERT"], "dynamodb": {"NewImage": {"status": {"S": ["ACTIVE"]}}}}
    assert matches(pattern, INSERT)
    assert not matches(pattern, MODIFY)  # eventName differs
    assert not matches(pattern, record("INSERT", new={**ITEM, "status": {"S": "PENDING"}}))  # status differs


def test_doc_boolean_attribute() -> None:
    assert matches(new_image(vip={"BOOL": [True]}), INSERT)
    assert not matches(new_image(vip={"BOOL": [False]}), INSERT)
    assert not matches(new_image(vip={"BOOL": ["true"]}), INSERT)  # a string is not a boolean


def test_doc_exists_on_a_leaf_in_a_list() -> None:
    # Lambda's docs: exists works on leaf nodes only, so test the typed values inside the list.
    assert matches(new_image(Organizations={"L": {"S": [{"exists": True}]}}), INSERT)
    assert not matches(new_image(Organizations={"L": {"S": [{"exists": False}]}}), INSERT)
    # ... the attribute itself is an object, not a leaf: exists true never matches, exists false always does.
    assert not matches(new_image(Organizations=[{"exists": True}]), INSERT)
    assert matches(new_image(Organizations=[{"exists": False}]), INSERT)


def test_event_name_list_or() -> None:
    pattern = {"eventName": ["INSERT", "MODIFY"]}
    assert matches(pattern, INSERT)
    assert matches(pattern, MODIFY)
    assert not matches(pattern, REMOVE)


# ---------------------------------------------------------------------------
# Each operator.


def test_exact_string_number_bool_null() -> None:
    assert matches({"eventSource": ["aws:dynamodb"]}, INSERT)
    assert matches({"dynamodb": {"SizeBytes": [26]}}, INSERT)
    assert matches({"dynamodb": {"SizeBytes": [26.0]}}, INSERT)  # numbers compare by value
    assert not matches({"dynamodb": {"SizeBytes": ["26"]}}, INSERT)  # a JSON number is not a string
    assert not matches({"dynamodb": {"SequenceNumber": [111]}}, INSERT)  # a string is not a number
    assert matches(new_image(deleted_at={"NULL": [True]}), INSERT)
    assert matches({"userIdentity": [None]}, record(new=ITEM, userIdentity=None))
    assert not matches({"userIdentity": [None]}, INSERT)  # null matches a null value, not a missing field
    assert not matches({"n": [True]}, {"n": 1})  # booleans are not numbers
    assert not matches({"n": [1]}, {"n": True})


def test_prefix_suffix_equals_ignore_case() -> None:
    assert matches(new_image(AccountManager={"S": [{"prefix": "Pat "}]}), INSERT)
    assert not matches(new_image(AccountManager={"S": [{"prefix": "pat "}]}), INSERT)
    assert matches(new_image(PaymentTerms={"S": [{"suffix": "days"}]}), INSERT)
    assert not matches(new_image(PaymentTerms={"S": [{"suffix": "weeks"}]}), INSERT)
    assert matches(new_image(status={"S": [{"equals-ignore-case": "active"}]}), INSERT)
    assert not matches(new_image(status={"S": [{"equals-ignore-case": "inactive"}]}), INSERT)
    assert not matches(new_image(vip={"BOOL": [{"prefix": "t"}]}), INSERT)  # string operators need strings


def test_exists_true_false() -> None:
    assert matches(new_image(status={"S": [{"exists": True}]}), INSERT)
    assert not matches(new_image(status={"S": [{"exists": False}]}), INSERT)
    assert matches(new_image(missing={"S": [{"exists": False}]}), INSERT)
    assert not matches(new_image(missing={"S": [{"exists": True}]}), INSERT)
    # Missing image entirely (REMOVE has no NewImage): the attribute is absent.
    assert matches(new_image(status={"S": [{"exists": False}]}), REMOVE)
    assert matches({"userIdentity": [{"exists": False}]}, INSERT)
    ttl = record("REMOVE", old=ITEM, userIdentity={"type": "Service", "principalId": "dynamodb.amazonaws.com"})
    assert matches({"userIdentity": {"type": ["Service"], "principalId": ["dynamodb.amazonaws.com"]}}, ttl)
    # exists ORed with a value: absent, or one of the values.
    pattern = new_image(status={"S": [{"exists": False}, "ACTIVE"]})
    assert matches(pattern, INSERT)
    assert matches(pattern, REMOVE)
    assert not matches(pattern, MODIFY)


def test_numeric_on_n_attribute() -> None:
    assert matches(new_image(amount={"N": [{"numeric": [">", 0, "<=", 50]}]}), INSERT)
    assert matches(new_image(amount={"N": [{"numeric": [">=", 42.5]}]}), INSERT)
    assert not matches(new_image(amount={"N": [{"numeric": [">", 42.5]}]}), INSERT)
    assert matches(new_image(amount={"N": [{"numeric": ["=", 42.5]}]}), INSERT)  # "42.50" == 42.5
    assert matches(new_image(quantity={"N": [{"numeric": ["<", 10]}]}), INSERT)
    assert not matches(new_image(quantity={"N": [{"numeric": [">=", 7.000001]}]}), INSERT)
    assert matches(new_image(quantity={"N": [7]}), INSERT)  # a number literal under N compares by value
    assert matches(new_image(quantity={"N": ["7"]}), INSERT)  # a string literal compares as a string
    assert not matches(new_image(quantity={"N": ["7.0"]}), INSERT)
    # Strings elsewhere are not numbers.
    assert not matches(new_image(PaymentTerms={"S": [{"numeric": [">", 0]}]}), INSERT)
    assert not matches({"dynamodb": {"SequenceNumber": [{"numeric": [">", 0]}]}}, INSERT)
    # JSON numbers anywhere.
    assert matches({"dynamodb": {"ApproximateCreationDateTime": [{"numeric": [">", 1600000000]}]}}, INSERT)
    # Number sets: any element.
    assert matches(new_image(scores={"NS": [{"numeric": [">", 9]}]}), INSERT)
    assert not matches(new_image(scores={"NS": [{"numeric": [">", 10]}]}), INSERT)
    # A missing or non-numeric value never matches.
    assert not matches(new_image(missing={"N": [{"numeric": [">", 0]}]}), INSERT)
    assert not matches(new_image(weird={"N": [{"numeric": [">", 0]}]}), record(new={"weird": {"N": "NaN"}}))


def test_numeric_range_on_modify_old_and_new() -> None:
    # Amount crossed 40 upwards.
    pattern = {"eventName": ["MODIFY"], "dynamodb": {
        "OldImage": {"amount": {"N": [{"numeric": ["<", 40]}]}},
        "NewImage": {"amount": {"N": [{"numeric": [">=", 40]}]}}}}
    crossed = record("MODIFY", new={"amount": {"N": "45"}}, old={"amount": {"N": "39.99"}})
    stayed = record("MODIFY", new={"amount": {"N": "45"}}, old={"amount": {"N": "41"}})
    assert matches(pattern, crossed)
    assert not matches(pattern, stayed)


def test_anything_but() -> None:
    assert matches({"eventName": [{"anything-but": ["REMOVE"]}]}, INSERT)
    assert not matches({"eventName": [{"anything-but": ["REMOVE"]}]}, REMOVE)
    assert not matches({"eventName": [{"anything-but": "INSERT"}]}, INSERT)
    assert matches({"eventName": [{"anything-but": "INSERT"}]}, MODIFY)
    assert not matches(new_image(status={"S": [{"anything-but": {"prefix": "ACT"}}]}), INSERT)
    assert matches(new_image(status={"S": [{"anything-but": {"prefix": "CLO"}}]}), INSERT)
    assert not matches(new_image(status={"S": [{"anything-but": {"suffix": "IVE"}}]}), INSERT)
    assert not matches(new_image(status={"S": [{"anything-but": {"equals-ignore-case": "active"}}]}), INSERT)
    assert not matches(new_image(status={"S": [{"anything-but": {"equals-ignore-case": ["x", "Active"]}}]}), INSERT)
    assert not matches(new_image(quantity={"N": [{"anything-but": [7]}]}), INSERT)  # numeric under N
    assert matches(new_image(quantity={"N": [{"anything-but": [8]}]}), INSERT)
    # anything-but needs the field: a missing one does not match.
    assert not matches(new_image(missing={"S": [{"anything-but": "x"}]}), INSERT)
    assert not matches(new_image(status={"S": [{"anything-but": "x"}]}), REMOVE)


# ---------------------------------------------------------------------------
# Arrays, maps and nesting.


def test_string_set_matches_any_element() -> None:
    assert matches(new_image(tags={"SS": ["green"]}), INSERT)
    assert matches(new_image(tags={"SS": [{"prefix": "bl"}]}), INSERT)
    assert not matches(new_image(tags={"SS": ["red"]}), INSERT)
    assert matches(new_image(tags={"SS": [{"anything-but": "blue"}]}), INSERT)  # "green" is not blue
    assert not matches(new_image(tags={"SS": [{"anything-but": "blue"}]}), record(new={"tags": {"SS": ["blue"]}}))


def test_list_of_typed_values() -> None:
    assert matches(new_image(Organizations={"L": {"S": ["Marketing"]}}), INSERT)
    assert not matches(new_image(Organizations={"L": {"S": ["Finance"]}}), INSERT)


def test_list_of_maps_matches_within_one_element() -> None:
    both_in_first = new_image(lines={"L": {"M": {"sku": {"S": ["A-1"]}, "qty": {"N": [{"numeric": ["<", 5]}]}}}})
    mixed = new_image(lines={"L": {"M": {"sku": {"S": ["A-1"]}, "qty": {"N": [{"numeric": [">", 5]}]}}}})
    assert matches(both_in_first, INSERT)
    assert not matches(mixed, INSERT)  # A-1 has qty 2; the qty 9 belongs to B-2


def test_nested_map() -> None:
    assert matches(new_image(address={"M": {"city": {"S": ["Seattle"]}}}), INSERT)
    assert not matches(new_image(address={"M": {"city": {"S": ["Portland"]}}}), INSERT)
    assert matches(new_image(address={"M": {"country": {"S": [{"exists": False}]}}}), INSERT)
    # A pattern object over a scalar: nothing below it exists.
    assert not matches({"eventName": {"S": ["INSERT"]}}, INSERT)


def test_and_across_fields() -> None:
    pattern = {"eventName": ["INSERT", "MODIFY"],
               "dynamodb": {"NewImage": {"status": {"S": ["ACTIVE"]}, "vip": {"BOOL": [True]}},
                            "Keys": {"CustomerName": {"S": [{"prefix": "Any"}]}}}}
    assert matches(pattern, INSERT)
    assert not matches(pattern, MODIFY)  # status CLOSED
    assert not matches(pattern, record(new={**ITEM, "vip": {"BOOL": False}}))


def test_patterns_are_ored() -> None:
    criteria = FilterCriteria.from_patterns([
        {"eventName": ["REMOVE"]},
        new_image(status={"S": ["CLOSED"]}),
    ])
    assert len(criteria) == 2
    assert criteria.matches(REMOVE)
    assert criteria.matches(MODIFY)
    assert not criteria.matches(INSERT)


def test_matching_does_not_change_the_record() -> None:
    before = copy.deepcopy(MODIFY)
    FilterCriteria.from_patterns([new_image(status={"S": [{"exists": False}]}), {"eventName": ["X"]}]).matches(MODIFY)
    assert before == MODIFY


# ---------------------------------------------------------------------------
# Input shapes.


PATTERN = {"eventName": ["INSERT"]}


@pytest.mark.parametrize("text", [
    json.dumps({"Filters": [{"Pattern": json.dumps(PATTERN)}]}),
    json.dumps({"Filters": [{"Pattern": PATTERN}]}),
    json.dumps([PATTERN]),
    json.dumps([{"Pattern": json.dumps(PATTERN)}]),
    json.dumps(PATTERN),
    "  " + json.dumps(PATTERN) + "\n",
], ids=["criteria", "criteria-object", "list", "list-of-filters", "single", "whitespace"])
def test_accepted_shapes(text: str) -> None:
    criteria = FilterCriteria.parse(text)
    assert criteria.patterns == [PATTERN]
    assert len(criteria) == 1
    assert criteria.matches(INSERT)
    assert not criteria.matches(MODIFY)


def test_five_patterns_allowed() -> None:
    criteria = FilterCriteria.parse(json.dumps([{"eventID": [str(n)]} for n in range(5)]))
    assert len(criteria) == 5
    assert criteria.matches(INSERT)  # eventID "1"


def test_file(tmp_path: Path) -> None:
    path = tmp_path / "filters.json"
    filters = [{"Pattern": json.dumps(PATTERN)}, {"Pattern": '{"eventName": ["REMOVE"]}'}]
    path.write_text(json.dumps({"Filters": filters}))
    criteria = FilterCriteria.parse(f"@{path}")
    assert len(criteria) == 2
    assert criteria.matches(INSERT) and criteria.matches(REMOVE) and not criteria.matches(MODIFY)


# ---------------------------------------------------------------------------
# Invalid input: always one ConfigError line.


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        FilterCriteria.parse(text)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(SETTING + ": ")
    assert "; " in message
    return message


@pytest.mark.parametrize(("pattern", "expected"), [
    ({}, "empty object"),
    ({"dynamodb": {}}, "empty object"),
    ({"eventName": "INSERT"}, "not an array"),
    ({"eventName": 5}, "not an array"),
    ({"eventName": []}, "empty array"),
    ({"eventName": [["INSERT"]]}, "nested array"),
    ({"eventName": [{"contains": "x"}]}, "unknown operator 'contains'"),
    ({"eventName": [{"wildcard": "IN*"}]}, "unknown operator"),
    ({"eventName": [{"prefix": "a", "suffix": "b"}]}, "exactly one operator"),
    ({"eventName": [{}]}, "exactly one operator"),
    ({"eventName": [{"prefix": 5}]}, "takes a string"),
    ({"eventName": [{"suffix": ["x"]}]}, "takes a string"),
    ({"eventName": [{"equals-ignore-case": None}]}, "takes a string"),
    ({"eventName": [{"exists": "yes"}]}, "exists takes true or false"),
    ({"n": [{"numeric": [">"]}]}, "numeric takes"),
    ({"n": [{"numeric": ">5"}]}, "numeric takes"),
    ({"n": [{"numeric": [">", 1, "<"]}]}, "numeric takes"),
    ({"n": [{"numeric": ["!=", 1]}]}, "is not one of"),
    ({"n": [{"numeric": [">", "5"]}]}, "is not a number"),
    ({"n": [{"numeric": [">", True]}]}, "is not a number"),
    ({"n": [{"numeric": ["<", 5, ">", 1]}]}, "lower bound"),
    ({"n": [{"numeric": ["=", 5, "<", 9]}]}, "lower bound"),
    ({"n": [{"anything-but": []}]}, "empty array"),
    ({"n": [{"anything-but": [True]}]}, "strings or numbers"),
    ({"n": [{"anything-but": None}]}, "strings or numbers"),
    ({"n": [{"anything-but": {"exists": True}}]}, "does not take"),
    ({"n": [{"anything-but": {"prefix": "a", "suffix": "b"}}]}, "one operator"),
    ({"n": [{"anything-but": {"prefix": 1}}]}, "takes a string"),
    ({"$or": [{"a": ["b"]}]}, "not supported"),
])
def test_invalid_pattern(pattern: dict[str, Any], expected: str) -> None:
    for text in (json.dumps(pattern), json.dumps({"Filters": [{"Pattern": json.dumps(pattern)}]})):
        message = error_of(text)
        assert "pattern 1:" in message
        assert expected in message


def test_invalid_pattern_names_the_path_and_number() -> None:
    message = error_of(json.dumps([PATTERN, {"dynamodb": {"NewImage": {"status": {"S": "ACTIVE"}}}}]))
    assert "pattern 2: dynamodb.NewImage.status.S" in message
    assert '["ACTIVE"]' in message  # the fix shows the array form


@pytest.mark.parametrize(("text", "expected"), [
    ("", "is empty"),
    ("   ", "is empty"),
    ("{not json", "not valid JSON"),
    ('{"Filters": [{"Pattern": "{bad"}]}', "Pattern 1 in the value is not valid JSON"),
    ("[]", "no patterns"),
    ('{"Filters": []}', "no patterns"),
    ('{"Filters": {}}', "not an array"),
    ('{"Filters": [], "Other": 1}', "keys besides Filters"),
    ('"eventName"', "not filter criteria"),
    ("5", "not filter criteria"),
    ("null", "not filter criteria"),
    ('["eventName"]', "pattern 1 in the value is not a JSON object"),
    ('{"Filters": [{"Pattern": "[1]"}]}', "is not a JSON object"),
    (json.dumps([{"eventID": [str(n)]} for n in range(6)]), "6 patterns; Lambda allows at most 5"),
    ("@", "names no file"),
])
def test_invalid_text(text: str, expected: str) -> None:
    assert expected in error_of(text)


def test_unreadable_files(tmp_path: Path) -> None:
    assert "cannot read file" in error_of(f"@{tmp_path / 'missing.json'}")
    assert "cannot read file" in error_of(f"@{tmp_path}")  # a directory
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe\x00")
    assert "cannot read file" in error_of(f"@{binary}")
    empty = tmp_path / "empty.json"
    empty.write_text("")
    assert "is empty" in error_of(f"@{empty}")
    bad = tmp_path / "bad.json"
    bad.write_text('{"eventName": ["INSERT"],}')
    message = error_of(f"@{bad}")
    assert str(bad) in message and "not valid JSON" in message


def test_from_patterns_validates() -> None:
    with pytest.raises(ConfigError, match="at most 5"):
        FilterCriteria.from_patterns([PATTERN] * 6)
    with pytest.raises(ConfigError, match="no patterns"):
        FilterCriteria.from_patterns([])
    with pytest.raises(ConfigError, match="pattern 1 is not a JSON object"):
        FilterCriteria.from_patterns(["eventName"])  # type: ignore[list-item]


def test_keys_with_newlines_stay_on_one_line() -> None:
    assert "\n" not in error_of(json.dumps({"a\nb": "x"}))

"""The manifest contract: what parses, and each bad manifest refused with its own reason."""

from __future__ import annotations

import json
from datetime import date

import pytest

from partners.contract import (CONTRACT_VERSION, ManifestLimits, contract_problems, json_depth_exceeds,
                               manifest_schema, parse_manifest)
from partners.errors import ContractError, TooLarge


def manifest(**changes) -> dict:
    base = {
        "partner": "glassco", "delivery": "batch-1", "license": "CC-BY-4.0",
        "consent": {"scope": ["pretraining"], "expires": "2099-01-01", "faces_allowed": False},
        "recordings": [{
            "path": "day1/walk.mp4", "sha256": "a" * 64, "bytes": 1000, "media_type": "video/mp4",
            "device": {"kind": "glasses", "model": "G1", "mounting": "head",
                       "intrinsics": {"fx": 500, "fy": 500, "cx": 32, "cy": 32}},
            "start_time": "2026-11-01T10:00:00Z", "duration_s": 2.0,
            "sensors": [{"stream": "imu", "path": "day1/walk.imu.csv", "sha256": "b" * 64, "bytes": 10,
                         "format": "csv", "columns": ["t", "ax"], "units": {"ax": "m/s^2"}, "rate_hz": 100,
                         "timestamp": "t"}]}],
    }
    base.update(changes)
    return base


def refusal(data, limits: ManifestLimits = ManifestLimits()) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    with pytest.raises((ContractError, TooLarge)) as caught:
        parse_manifest(raw, limits)
    return caught.value.reason


def test_a_good_manifest_parses_and_round_trips_canonically():
    parsed = parse_manifest(json.dumps(manifest()))
    assert parsed.contract_version == CONTRACT_VERSION
    assert [f.path for f in parsed.files()] == ["day1/walk.mp4", "day1/walk.imu.csv"]
    assert parse_manifest(parsed.canonical_json()).canonical_json() == parsed.canonical_json()
    assert contract_problems(parsed, date(2026, 11, 29)) == []


@pytest.mark.parametrize("path", ["../escape.mp4", "/etc/passwd", "a/../../b.mp4", "C:\\x.mp4", "a//b.mp4",
                                  "./a.mp4", "a/b\x00.mp4", "~/.ssh/id_rsa", "x/" * 20 + "deep.mp4"])
def test_traversal_and_absolute_paths_are_refused(path):
    data = manifest()
    data["recordings"][0]["path"] = path
    assert refusal(data) == "unsafe_path"


def test_sensor_paths_are_checked_too():
    data = manifest()
    data["recordings"][0]["sensors"][0]["path"] = "../../imu.csv"
    assert refusal(data) == "unsafe_path"


def test_unknown_consent_scope_names_the_allowed_ones():
    data = manifest()
    data["consent"]["scope"] = ["advertising"]
    with pytest.raises(ContractError) as caught:
        parse_manifest(json.dumps(data))
    assert caught.value.reason == "unknown_consent_scope"
    assert "pretraining" in str(caught.value) and "advertising" in str(caught.value)


def test_expired_consent_and_duplicates_are_contract_problems():
    data = manifest(consent={"scope": ["evaluation"], "expires": "2020-01-01"})
    second = json.loads(json.dumps(data["recordings"][0]))
    second["sensors"] = []
    data["recordings"].append(second)
    problems = contract_problems(parse_manifest(json.dumps(data)), date(2026, 11, 29))
    reasons = [p.reason for p in problems]
    assert reasons.count("consent_expired") == 1 and "duplicate_entry" in reasons
    assert all(p.stage == "contract" and p.detail for p in problems)


def test_huge_deep_and_broken_json_are_refused_before_parsing():
    assert refusal(b"[" * 100_000 + b"]" * 100_000) == "manifest_too_deep"
    assert refusal(json.dumps(manifest(notes="x" * 3000)).encode() * 1000) == "manifest_too_large"
    assert refusal(b"{not json") == "manifest_not_json"
    assert refusal(b"\xff\xfe") == "manifest_not_json"
    assert refusal(b"{\"a\": " + b"9" * 5000 + b"}") == "manifest_not_json"
    assert refusal(b"[1, 2]") == "manifest_invalid"
    assert json_depth_exceeds(b'{"a": "[[[[[[[[[[[[[[[[[[[[[[[[["}', 3) is False


def test_unknown_fields_infinite_numbers_and_oversized_files_are_refused():
    assert refusal(manifest(surprise=1)) == "unknown_field"
    data = manifest()
    data["recordings"][0]["duration_s"] = float("inf")
    assert refusal(json.dumps(data).encode()) == "manifest_invalid"
    data = manifest()
    data["recordings"][0]["bytes"] = 10 ** 30
    assert refusal(data) == "manifest_invalid"
    assert refusal(manifest(contract_version="0.9")) == "unsupported_contract_version"


def test_the_published_schema_is_versioned_and_validates_the_example():
    import jsonschema

    schema = manifest_schema()
    assert CONTRACT_VERSION in schema["$id"]
    jsonschema.validate(json.loads(json.dumps(manifest())), schema)
    bad = manifest()
    bad["consent"]["scope"] = ["advertising"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)

"""schemathesis drives the service's OpenAPI spec: over a thousand generated requests, valid and not, and no 5xx."""

from __future__ import annotations

import math
from collections import Counter

import pytest

# PostgreSQL is the stricter backend (NUL bytes, lengths), so it takes the full thousand; SQLite a smaller share
TARGETS = {"postgresql": 1000, "sqlite": 200}


@pytest.mark.slow
def test_generated_requests_never_get_a_server_error(service, catalog_url):
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st
    from schemathesis import GenerationMode

    target = TARGETS["sqlite" if catalog_url.startswith("sqlite") else "postgresql"]
    schema = schemathesis.openapi.from_url(f"{service.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 12
    per_operation = math.ceil(target / (2 * len(operations))) + 2
    tokens = [service.headers(service.a), service.headers(service.a), service.headers(service.b), {},
              {"Authorization": "Bearer alk_0123456789abcdef_" + "A" * 43}]
    statuses: Counter[int] = Counter()
    server_errors: list[str] = []
    while sum(statuses.values()) < target:
        for operation in operations:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                # valid manifests are slow to generate (a few per second); every other operation gets its share
                examples = 6 if operation.label == "POST /deliveries" and mode is GenerationMode.POSITIVE \
                    else per_operation

                @given(case=operation.as_strategy(generation_mode=mode), who=st.sampled_from(tokens))
                @settings(max_examples=examples, deadline=None, database=None,
                          suppress_health_check=list(HealthCheck), phases=[Phase.generate])
                def call(case, who):
                    if mode is GenerationMode.POSITIVE and isinstance(case.body, dict) and who == tokens[0]:
                        _steer(case.body)
                    response = case.call(headers=who, timeout=30)
                    statuses[response.status_code] += 1
                    if response.status_code >= 500:
                        server_errors.append(f"{case.method} {case.formatted_path} -> {response.status_code}: "
                                             f"{response.text[:300]}")

                call()
    total = sum(statuses.values())
    print(f"\n{total} generated requests over {len(operations)} operations; statuses {dict(sorted(statuses.items()))}")
    assert total >= target
    assert server_errors == [], server_errors[:5]
    assert statuses[200] > 0 and statuses[201] > 0 and statuses[404] > 0 and statuses[401] > 0 and statuses[422] > 0


def _steer(manifest: dict) -> None:
    """Take a generated manifest past what a schema cannot say (partner, expiry, safe unique paths), so the
    fuzzer also reaches the store and catalog writes behind a 201; every other field stays as generated."""
    if not isinstance(manifest.get("recordings"), list) or not isinstance(manifest.get("consent"), dict):
        return
    manifest["partner"] = "partner-a"
    manifest["consent"]["expires"] = "2099-01-01"
    for i, recording in enumerate(manifest["recordings"]):
        if isinstance(recording, dict):
            recording["path"] = f"gen/{i}.mp4"
            recording["sha256"] = f"{i:064x}"
            for j, sensor in enumerate(recording.get("sensors") or []):
                if isinstance(sensor, dict):
                    sensor["path"] = f"gen/{i}.{j}.csv"

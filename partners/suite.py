"""The contract's Great Expectations suite over a delivery's tables of probed facts, versioned with the contract."""

from __future__ import annotations

import logging
import os
import threading
import uuid
from dataclasses import dataclass
from typing import Any

from partners.contract import CONTRACT_VERSION, ContractBounds

SUITE_VERSION = f"{CONTRACT_VERSION}.2"  # .2: any video codec with a decoder passes (ingest re-encodes every clip)
_GX_LOCK = threading.Lock()  # one validation at a time per process: GX contexts are not thread-safe


@dataclass(frozen=True)
class Check:
    """One expectation: on which table and column, what it demands, and the refusal reason when it fails."""

    table: str  # "recordings" or "sensors"
    kind: str  # the GX expectation class name
    column: str
    reason: str  # the rejection reason; "" means: the failing value itself is the reason
    args: tuple[tuple[str, Any], ...] = ()

    @property
    def description(self) -> str:
        bounds = ", ".join(f"{k}={v}" for k, v in self.args)
        return f"{self.table}.{self.column}: {self.kind}({bounds})"


@dataclass(frozen=True)
class Finding:
    """One failing cell: which file, which check, what was observed."""

    path: str
    reason: str
    column: str
    observed: Any
    check: str


@dataclass(frozen=True)
class SuiteResult:
    """The verdict of every expectation and every failing cell."""

    version: str
    evaluated: int
    passed: int
    checks: tuple[tuple[str, bool, int], ...]  # (description, success, failing rows)
    findings: tuple[Finding, ...]


def contract_checks(bounds: ContractBounds) -> tuple[Check, ...]:
    """The suite, as data: integrity first, then decodability, then the contract's bounds on probed facts.

    No list of codecs: every clip is re-encoded to H.264, so any codec FFmpeg decodes will do (Cinepak in AVI as well
    as HEVC in mp4). A codec without a decoder is refused by the probe (probe_reason unsupported_codec), and the
    container allow-list, the security boundary, is the probe's too."""
    def integrity(table: str) -> list[Check]:
        return [Check(table, "ExpectColumnValuesToBeInSet", "present", "file_missing", (("value_set", [True]),)),
                Check(table, "ExpectColumnValuesToBeInSet", "size_ok", "size_mismatch", (("value_set", [True]),)),
                Check(table, "ExpectColumnValuesToBeInSet", "sha256_ok", "sha256_mismatch", (("value_set", [True]),))]

    return (
        *integrity("recordings"),
        Check("recordings", "ExpectColumnValuesToBeNull", "probe_reason", ""),
        Check("recordings", "ExpectColumnValuesToBeBetween", "width", "resolution_out_of_bounds",
              (("min_value", bounds.min_side), ("max_value", bounds.max_side))),
        Check("recordings", "ExpectColumnValuesToBeBetween", "height", "resolution_out_of_bounds",
              (("min_value", bounds.min_side), ("max_value", bounds.max_side))),
        Check("recordings", "ExpectColumnValuesToBeBetween", "fps", "fps_out_of_bounds",
              (("min_value", bounds.min_fps), ("max_value", bounds.max_fps))),
        Check("recordings", "ExpectColumnValuesToBeBetween", "duration_s", "duration_out_of_bounds",
              (("min_value", bounds.min_duration_s), ("max_value", bounds.max_duration_s))),
        Check("recordings", "ExpectColumnValuesToBeBetween", "duration_excess_s", "duration_mismatch",
              (("max_value", 0.0),)),
        *integrity("sensors"),
        Check("sensors", "ExpectColumnValuesToBeNull", "read_reason", ""),
        Check("sensors", "ExpectColumnValuesToBeInSet", "monotonic", "timestamps_not_monotonic",
              (("value_set", [True]),)),
        Check("sensors", "ExpectColumnValuesToBeBetween", "rate_ratio", "rate_mismatch",
              (("min_value", 1 - bounds.sensor_rate_tolerance), ("max_value", 1 + bounds.sensor_rate_tolerance))),
        Check("sensors", "ExpectColumnValuesToBeBetween", "max_nan_run_s", "nan_run",
              (("max_value", bounds.max_nan_run_s),)),
    )


def _context():
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")  # partner metadata leaves nothing behind
    logging.getLogger("great_expectations").setLevel(logging.WARNING)  # its INFO chatter would drown service logs
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return gx, context


def run_suite(tables: dict[str, list[dict[str, Any]]], bounds: ContractBounds) -> SuiteResult:
    """Run the contract's suite over {table name: rows}; each row has a `path` column naming its file."""
    import pandas as pd

    checks = contract_checks(bounds)
    outcomes: list[tuple[str, bool, int]] = []
    findings: list[Finding] = []
    with _GX_LOCK:
        gx, context = _context()
        source = context.data_sources.add_pandas(f"delivery-{uuid.uuid4().hex[:8]}")
        for table in ("recordings", "sensors"):
            table_checks = [c for c in checks if c.table == table]
            rows = tables.get(table, [])
            if not rows:
                outcomes.extend((c.description, True, 0) for c in table_checks)
                continue
            frame = pd.DataFrame(rows)
            batch = source.add_dataframe_asset(table).add_batch_definition_whole_dataframe("all")
            suite = context.suites.add(gx.ExpectationSuite(name=f"alliance-contract-{SUITE_VERSION}-{table}"))
            for check in table_checks:
                expectation = getattr(gx.expectations, check.kind)(column=check.column, **dict(check.args),
                                                                    meta={"reason": check.reason})
                suite.add_expectation(expectation)
            definition = context.validation_definitions.add(
                gx.ValidationDefinition(name=f"{table}-{uuid.uuid4().hex[:8]}", data=batch, suite=suite))
            result = definition.run(batch_parameters={"dataframe": frame}, result_format={
                "result_format": "COMPLETE", "unexpected_index_column_names": ["path"]})
            by_column = {(c.column, c.kind): c for c in table_checks}
            for item in result.results:
                config = item.expectation_config
                check = by_column[(config.kwargs["column"], type_name(config.type))]
                unexpected = item.result.get("unexpected_index_list") or []
                outcomes.append((check.description, bool(item.success), len(unexpected)))
                for cell in unexpected:
                    observed = cell.get(check.column)
                    reason = check.reason or str(observed)
                    findings.append(Finding(str(cell["path"]), reason, check.column, _plain(observed),
                                            check.description))
    passed = sum(1 for _, ok, _ in outcomes if ok)
    return SuiteResult(SUITE_VERSION, len(outcomes), passed, tuple(outcomes), tuple(findings))


def type_name(snake: str) -> str:
    """expect_column_values_to_be_null -> ExpectColumnValuesToBeNull."""
    return "".join(part.capitalize() for part in snake.split("_"))


def _plain(value: Any) -> Any:
    """numpy scalars to Python ones, so findings serialise to JSON."""
    return value.item() if hasattr(value, "item") else value

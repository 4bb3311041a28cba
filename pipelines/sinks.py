"""Shared Beam sinks: parquet parts and rejections in the object store, throttled progress, and metric helpers."""

from __future__ import annotations

import functools
import hashlib
import io
import json
import re
import time
import uuid
from collections import Counter
from typing import Any, Iterable, Iterator, Mapping, Sequence

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.metrics import Metrics

from alliance.errors import RetryableError, is_infrastructure
from alliance.settings import Settings, StoreAddress
from alliance.store import ObjectStore
from alliance.tables import REJECTION_SCHEMA, Rejection

PART = "part-{:05d}.parquet"
_SURROGATE = re.compile("[\ud800-\udfff]")


def safe_text(text: str) -> str:
    """Text every UTF-8 writer takes (parquet, JSON, SQL, a terminal): a lone surrogate, which is how os.fsdecode
    carries a file-name byte that is not UTF-8, becomes \\xNN (that byte), or \\uNNNN outside the escape range."""
    if text.isascii():
        return text
    return _SURROGATE.sub(lambda m: (f"\\x{ord(m.group()) - 0xdc00:02x}" if ord(m.group()) >= 0xdc80
                                     else f"\\u{ord(m.group()):04x}"), text)


def _safe(value: Any) -> Any:
    return safe_text(value) if isinstance(value, str) else value


def table_prefix(table: str, run: str) -> str:
    """tables/{table}/{run}: where a run's parts of a table live (clips, rejections, selections...)."""
    return f"tables/{table}/{run}"


def part_of(key: str, parts: int) -> int:
    """The part a row goes to: stable across runs, processes and Python hash seeds."""
    return int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) % max(1, parts)


def table_bytes(rows: Sequence[Mapping[str, Any]], schema: pa.Schema, sort_by: str | None = None) -> bytes:
    """Rows as one parquet file (zstd), sorted by `sort_by` so a re-run writes the same bytes."""
    if sort_by:
        rows = sorted(rows, key=lambda row: str(row[sort_by]))
    table = pa.Table.from_pylist([{name: _safe(row.get(name)) for name in schema.names} for row in rows],
                                 schema=schema)
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    return buffer.getvalue()


def read_table(store: ObjectStore, prefix: str, schema: pa.Schema | None = None) -> pa.Table:
    """Every part under prefix as one table (empty, with `schema`, when there is none)."""
    parts = [o.key for o in store.list(f"{prefix.rstrip('/')}/") if o.key.endswith(".parquet")]
    tables = [pq.read_table(io.BytesIO(store.get_bytes(key))) for key in parts]
    if not tables:
        return (schema or pa.schema([])).empty_table()
    return pa.concat_tables(tables, promote_options="default")


def ensure_part(store: ObjectStore, prefix: str, schema: pa.Schema) -> None:
    """Write an empty part when a run produced no rows, so readers find the table and its schema."""
    if not any(o.key.endswith(".parquet") for o in store.list(f"{prefix.rstrip('/')}/")):
        store.put_bytes(f"{prefix.rstrip('/')}/{PART.format(0)}", table_bytes([], schema))


def clear_prefix(store: ObjectStore, prefix: str) -> int:
    """Delete what a previous attempt of the same run left under prefix; returns how many objects."""
    keys = [o.key for o in store.list(f"{prefix.rstrip('/')}/")]
    for key in keys:
        store.delete(key)
    return len(keys)


def write_jsonl(store: ObjectStore, key: str, rows: Iterable[Mapping[str, Any]]) -> None:
    store.put_bytes(key, "".join(json.dumps({k: _safe(v) for k, v in row.items()}, sort_keys=True) + "\n"
                                 for row in rows).encode())


# --------------------------------------------------------------------------- Beam transforms


class _WritePart(beam.DoFn):
    """(part number, rows) -> the part's store key, once written."""

    def __init__(self, settings: Settings | StoreAddress, prefix: str, schema: pa.Schema, sort_by: str):
        self.store_address = StoreAddress.of(settings)  # never a secret: workers bring their own
        self.prefix, self.schema, self.sort_by = prefix.rstrip("/"), schema, sort_by

    def setup(self) -> None:
        self.store = self.store_address.open()

    def process(self, element) -> Iterator[str]:
        part, rows = element
        key = f"{self.prefix}/{PART.format(part)}"
        self.store.put_bytes(key, table_bytes(list(rows), self.schema, self.sort_by))
        yield key


class WriteParts(beam.PTransform):
    """Rows (dicts) -> `parts` parquet files {prefix}/part-NNNNN.parquet, each sorted by `key_field`."""

    def __init__(self, settings: Settings | StoreAddress, prefix: str, schema: pa.Schema, key_field: str,
                 parts: int = 4):
        super().__init__()
        self.settings = StoreAddress.of(settings)
        self.prefix, self.schema, self.key_field, self.parts = prefix, schema, key_field, parts

    def expand(self, rows):
        key_field, parts = self.key_field, self.parts
        return (rows
                | "ByPart" >> beam.Map(lambda row: (part_of(str(row[key_field]), parts), row))
                | "GroupParts" >> beam.GroupByKey()
                | "WritePart" >> beam.ParDo(_WritePart(self.settings, self.prefix, self.schema, key_field)))


class WriteRejections(beam.PTransform):
    """Rejection records -> tables/rejections/{run}/part-*.parquet (REJECTION_SCHEMA)."""

    def __init__(self, settings: Settings | StoreAddress, run: str, parts: int = 1):
        super().__init__()
        self.settings, self.run, self.parts = StoreAddress.of(settings), run, parts

    def expand(self, rejections):
        return (rejections
                | "AsRows" >> beam.Map(lambda r: r.to_dict() if isinstance(r, Rejection) else dict(r))
                | "Write" >> WriteParts(self.settings, table_prefix("rejections", self.run), REJECTION_SCHEMA, "key",
                                        self.parts))


# --------------------------------------------------------------------------- metrics and progress


def count(namespace: str, name: str, n: int = 1) -> None:
    """Increment a Beam counter (a rejection reason doubles as a counter name)."""
    Metrics.counter(namespace, name).inc(n)


def counters(result, namespace: str) -> dict[str, int]:
    """The job's counters in namespace (committed where the runner has them, else attempted); {} if unsupported."""
    from apache_beam.metrics.metric import MetricsFilter

    try:
        found = result.metrics().query(MetricsFilter().with_namespace(namespace))["counters"]
    except (AttributeError, KeyError, ValueError, RuntimeError):  # a runner without metrics
        return {}
    totals: Counter = Counter()
    for item in found:
        value = item.committed if item.committed is not None else item.attempted
        totals[item.key.metric.name] += int(value or 0)
    return dict(totals)


class ProgressWriter:
    """Worker side of progress: counts accumulate and land as small JSON objects at most every `every_s` seconds.

    Runner-independent (the store is the only channel), and lossy only in the way progress may be: a retried
    bundle counts twice. Final figures come from the written tables, never from here.
    """

    def __init__(self, store: ObjectStore, prefix: str, every_s: float = 2.0):
        self.store, self.prefix, self.every_s = store, prefix.rstrip("/"), every_s
        self.writer = uuid.uuid4().hex[:12]
        self.counts: Counter = Counter()
        self.sequence = 0
        self.last = time.monotonic()

    def add(self, **counts: int) -> None:
        self.counts.update(counts)
        if time.monotonic() - self.last >= self.every_s:
            self.flush()

    def flush(self) -> None:
        self.last = time.monotonic()
        if not self.counts:
            return
        self.store.put_bytes(f"{self.prefix}/{self.writer}-{self.sequence:06d}.json",
                             json.dumps(dict(self.counts), sort_keys=True).encode())
        self.sequence += 1
        self.counts.clear()


def read_progress(store: ObjectStore, prefix: str) -> Counter:
    """Launcher side: the sum of every progress object under prefix."""
    total: Counter = Counter()
    for info in store.list(f"{prefix.rstrip('/')}/"):
        if info.key.endswith(".json"):
            total.update(json.loads(store.get_bytes(info.key)))
    return total


# --------------------------------------------------------------------------- the failure contract
#
# A media fault is a rejection with a reason (the DoFn yields it through `reject`); an infrastructure fault (helper,
# child start, local copy, store, catalog) is a RetryableError that Beam retries and that never becomes a rejection;
# anything unforeseen leaves the DoFn as `Unforeseen` and Beam's `with_exception_handling` turns it into a dead letter
# (`DEAD_LETTERS`) with its traceback, which the pipeline writes to the rejection table: the run goes on.


class Unforeseen(Exception):
    """An error no stage foresaw, on its way to a dead letter; its __cause__ is the error, traceback and all."""


DEAD_LETTERS = dict(dead_letter_tag="dead", exc_class=Unforeseen)  # with_exception_handling(**DEAD_LETTERS)


def under_contract(process):
    """Decorates a DoFn's `process`: a RetryableError or infrastructure fault (alliance.errors.is_infrastructure) is
    raised as a RetryableError, so Beam retries the bundle and no dead letter or rejection is made of it; any other
    error is raised as Unforeseen, so `with_exception_handling(**DEAD_LETTERS)` makes a dead letter of it."""

    @functools.wraps(process)
    def guarded(self, *args, **kwargs):
        try:
            yield from process(self, *args, **kwargs)
        except RetryableError:
            raise
        except Exception as e:
            if is_infrastructure(e):
                raise RetryableError(f"{type(e).__name__}: {e}; the work is retried") from e
            raise Unforeseen(f"{type(e).__name__}: {e}") from e

    return guarded


def reject(namespace: str, rejection: Rejection) -> beam.pvalue.TaggedOutput:
    """A rejection on its way out of a DoFn: counted under its reason (a metric name) and tagged `rejected`."""
    count(namespace, f"rejected_{rejection.reason}")
    return beam.pvalue.TaggedOutput("rejected", rejection)


def dead_letter_detail(key: str, failure: tuple) -> str:
    """What a person reads of a dead letter: the key, the error and the traceback (`failure` is Beam's
    (type, repr, formatted traceback lines))."""
    _, message, lines = failure
    return safe_text(f"{key}: failed with {message}; nothing in the data explains it: report it with this traceback "
                     f"(and the file)\n{''.join(lines).rstrip()}")

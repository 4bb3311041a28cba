"""Many small store requests (sizes, deletes): one by one while they are quick, in threads once they wait."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def map_requests(fn: Callable[[T], R], items: Sequence[T], threads: int = 8, *, quick_s: float = 0.02) -> list[R]:
    """fn over items, in order. A local disk answers in microseconds, where threads only add hand-offs; once
    the calls so far took quick_s (network round trips, e.g. S3 HEAD or DELETE), the rest run in `threads`
    threads, one task per thread."""
    results: list[R] = []
    started = time.perf_counter()
    for done, item in enumerate(items, 1):
        results.append(fn(item))
        if done < len(items) and time.perf_counter() - started > quick_s:
            rest = list(items[done:])
            chunks = [rest[i::threads] for i in range(threads)]
            with ThreadPoolExecutor(threads, thread_name_prefix="store-requests") as pool:
                answers = list(pool.map(lambda chunk: [fn(item) for item in chunk], chunks))
            by_position = [None] * len(rest)
            for i, chunk_answers in enumerate(answers):
                by_position[i::threads] = chunk_answers
            results.extend(by_position)
            break
    return results

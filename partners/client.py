"""The partner side against the service: upload a checked folder (partners/folder.py) in resumable parts."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator

from pydantic import ValidationError

from partners import localfs
from partners.api import DeliveryStatus, DeliveryVerdict, ErrorOut, UploadPlan
from partners.errors import DeliveryFailed
from partners.folder import PART_SIZE, DeliveryMetadata, build_manifest, load_metadata, part_checksums, progress_bar

log = logging.getLogger(__name__)
FINAL = ("accepted", "partial", "rejected")


# --------------------------------------------------------------------------- the service


class _Api:
    """Calls to the delivery service, each refusal turned into a DeliveryFailed with the service's reason."""

    def __init__(self, url: str, token: str, timeout_s: float = 60.0):
        import httpx

        self.http = httpx.Client(base_url=url.rstrip("/"), timeout=timeout_s,
                                 headers={"Authorization": f"Bearer {token}"})
        self.parts = httpx.Client(timeout=timeout_s)  # presigned URLs: never send the token to the store

    def close(self) -> None:
        self.http.close()
        self.parts.close()

    def call(self, method: str, path: str, **kwargs):
        for attempt in range(6):
            response = self.http.request(method, path, **kwargs)
            if response.status_code == 429 and attempt < 5:
                time.sleep(min(10.0, float(response.headers.get("retry-after", "1"))))
                continue
            break
        if response.status_code >= 400:
            try:
                error = ErrorOut.model_validate_json(response.content)
                problems = "".join(f"\n  {p.get('reason', p.get('field', ''))}: {p.get('detail', '')}"
                                   for p in error.problems[1:])
                raise DeliveryFailed(error.error, f"{method} {path}: {error.detail}{problems}", error.problems)
            except ValidationError:
                raise DeliveryFailed("service_error", f"{method} {path}: HTTP {response.status_code}: "
                                     f"{response.text[:300]}") from None
        return response

    def put_part(self, url: str, data: bytes, checksum: str) -> None:
        """PUT one part with its checksum as planned (base64 SHA-256): the store, or the service's own part
        endpoint, refuses bytes that do not match it (damaged on the way, or the file changed since)."""
        import httpx

        headers = {}
        if "&sig=" in url or "x-amz-checksum-sha256" in url.lower():  # S3 only takes it where it was signed
            headers["x-amz-checksum-sha256"] = checksum
        for attempt in range(4):
            try:
                response = self.parts.put(url, content=data, headers=headers)
            except httpx.TransportError as e:
                if attempt == 3:
                    raise DeliveryFailed("upload_failed", f"uploading a part failed: {e}") from e
                time.sleep(0.5 * 2 ** attempt)
                continue
            if response.status_code < 300:
                return
            if response.status_code >= 500 and attempt < 3:
                time.sleep(0.5 * 2 ** attempt)
                continue
            if response.status_code in (403, 404) and any(word in response.text.lower() for word in (
                    "expired", "nosuchupload")):  # short-lived URLs: the caller asks for fresh ones
                raise DeliveryFailed("url_expired", f"a part URL expired or its upload was closed: "
                                     f"HTTP {response.status_code}")
            raise DeliveryFailed("upload_refused", f"the store refused a part: HTTP {response.status_code}: "
                                 f"{response.text[:300]}")


def _read_part(folder: Path, path: str, offset: int, size: int) -> bytes:
    return localfs.read_bytes(folder, path, offset, size)


def _send_parts(api: _Api, folder: Path, path: str, plan: UploadPlan, checksums: list[str],
                slots: threading.Semaphore, concurrency: int) -> Iterator[tuple[int, int]]:
    """PUT the plan's parts, each once it holds one of the `slots` shared by every file in flight (memory: one part
    a slot); yields (part, bytes) sent. A part's result is yielded before its slot goes to the next part, so a
    caller that stops on a part has sent nothing after it."""
    from concurrent.futures import ThreadPoolExecutor, wait

    def send(part) -> tuple[int, int]:
        data = _read_part(folder, path, (part.part - 1) * plan.part_size, part.bytes)
        api.put_part(part.url, data, checksums[part.part - 1])
        return part.part, len(data)

    def finished():
        nonlocal inflight
        done = {future for future in inflight if future.done()}
        inflight -= done
        return [future.result() for future in done]

    with ThreadPoolExecutor(max(1, min(concurrency, len(plan.urls))), thread_name_prefix="part") as pool:
        inflight: set = set()
        for part in plan.urls:
            slots.acquire()
            try:
                yield from finished()
                future = pool.submit(send, part)
            except BaseException:
                slots.release()
                raise
            future.add_done_callback(lambda _: slots.release())  # after the result is set: see finished()
            inflight.add(future)
        wait(inflight)
        yield from finished()


def deliver(folder: str | Path, url: str, token: str, *, metadata: DeliveryMetadata | None = None,
            progress: bool = False, wait_s: float = 600.0, concurrency: int = 4,
            on_part: Callable[[str, int], None] | None = None) -> DeliveryVerdict:
    """Deliver a folder: manifest, resumable multipart upload, completion, then wait for and return the verdict.

    Re-running after an interruption re-opens the same delivery and sends only the parts the store lacks.
    `on_part(path, part)` is called after each part is sent (progress hooks, tests)."""
    folder = Path(folder).resolve()
    metadata = metadata or load_metadata(folder)
    api = _Api(url, token)
    try:
        partner = metadata.partner or api.call("GET", "/me").json()["partner"]
        manifest = build_manifest(folder, metadata, partner, progress)
        opened = api.call("POST", "/deliveries", content=manifest.canonical_json(),
                          headers={"Content-Type": "application/json"})
        status = DeliveryStatus.model_validate_json(opened.content)
        sent, skipped = 0, 0
        pending = [f for f in status.files if f.state == "pending"]
        with progress_bar(progress and bool(pending)) as bar:
            task = bar.add_task(f"uploading {status.delivery}", total=sum(f.bytes for f in pending))
            lock = threading.Lock()
            slots = threading.Semaphore(max(1, concurrency))  # parts in flight, all files together
            cut = {"part_size": PART_SIZE}  # the service's, learnt from its first part_size_mismatch

            def plan_parts(file) -> tuple[UploadPlan, list[str]]:
                """The file's upload plan, each URL carrying its part's checksum."""
                while True:
                    part_size = cut["part_size"]
                    checksums = part_checksums(folder, file.path, part_size)
                    try:
                        return UploadPlan.model_validate_json(api.call(
                            "POST", f"/deliveries/{status.id}/files/{file.index}/upload",
                            json={"part_size": part_size, "sha256": checksums}).content), checksums
                    except DeliveryFailed as e:
                        told = next((p.get("part_size") for p in e.problems if isinstance(p.get("part_size"), int)),
                                    None)
                        if e.reason != "part_size_mismatch" or not told or told == part_size:
                            raise
                        cut["part_size"] = told

            def upload(file) -> tuple[int, int]:
                """Plan, send and complete one file; (bytes sent, parts already there)."""
                sent_here, skipped_here = 0, 0
                for attempt in range(4):  # part URLs are short-lived: on expiry, ask for the missing ones again
                    plan, checksums = plan_parts(file)
                    if attempt == 0:
                        skipped_here += len(plan.done)
                        with lock:
                            bar.advance(task, sum(min(plan.part_size, file.bytes - (n - 1) * plan.part_size)
                                                  for n in plan.done))
                    try:
                        for part, size in _send_parts(api, folder, file.path, plan, checksums, slots, concurrency):
                            sent_here += size
                            with lock:
                                bar.advance(task, size)
                                if on_part is not None:
                                    on_part(file.path, part)
                        break
                    except DeliveryFailed as e:
                        if e.reason != "url_expired" or attempt == 3:
                            raise
                api.call("POST", f"/deliveries/{status.id}/files/{file.index}/complete",
                         json={"part_size": plan.part_size, "sha256": checksums})
                return sent_here, skipped_here

            # several files in flight: their round trips (checksums, plan, complete) overlap other files' parts,
            # while the slots keep the parts in flight (and in memory) to `concurrency`
            with ThreadPoolExecutor(max(1, concurrency), thread_name_prefix="file") as files:
                for sent_here, skipped_here in files.map(upload, pending):
                    sent += sent_here
                    skipped += skipped_here
        api.call("POST", f"/deliveries/{status.id}/complete")
        status = _wait(api, status.id, wait_s)
        report = api.call("GET", f"/deliveries/{status.id}/report.json").json()
    finally:
        api.close()
    problems = [{"path": f["path"], "reason": p["reason"], "detail": p["detail"], "fix": p["fix"]}
                for f in report["files"] for p in f["problems"]]
    problems += [{"path": "manifest.json", **p} for p in report.get("delivery_problems", [])]
    return DeliveryVerdict(delivery_id=status.id, delivery=status.delivery, status=status.status,
                           recordings_accepted=report["recordings_accepted"],
                           recordings_rejected=report["recordings_rejected"], reasons=report["reasons"],
                           problems=problems, report_url=f"{url.rstrip('/')}{status.report_html_url}",
                           report_key=status.report_key, uploaded_bytes=sent, skipped_parts=skipped)


def _wait(api: _Api, delivery_id: str, wait_s: float) -> DeliveryStatus:
    deadline = time.monotonic() + wait_s
    delay = 0.2
    while True:
        status = DeliveryStatus.model_validate_json(api.call("GET", f"/deliveries/{delivery_id}").content)
        if status.status in FINAL:
            return status
        if status.status == "error":
            raise DeliveryFailed("validation_error", f"delivery {delivery_id}: the service could not validate it; "
                                 "run `alliance deliver` again (it resumes), or contact the data team")
        if status.status == "expired":
            raise DeliveryFailed("delivery_expired", f"delivery {delivery_id}: {status.summary.get('expired', '')}")
        if time.monotonic() > deadline:
            raise DeliveryFailed("validation_timeout", f"delivery {delivery_id} is still {status.status} after "
                                 f"{wait_s:.0f}s: check later with GET /deliveries/{delivery_id}")
        time.sleep(delay)
        delay = min(2.0, delay * 1.5)


def revoke(url: str, token: str, recording_id: str, reason: str) -> dict:
    """Withdraw consent for one recording (its id is the sha256 of its bytes)."""
    api = _Api(url, token)
    try:
        return api.call("POST", f"/recordings/{recording_id}/revoke", json={"reason": reason}).json()
    finally:
        api.close()


def iter_recording_ids(folder: str | Path, names: list[str]) -> Iterator[tuple[str, str]]:
    """(name, recording id) of files in a folder: the id is the sha256 of the bytes."""
    from partners.validate import hash_file

    for name in names:
        yield name, hash_file(Path(folder) / name)[1]


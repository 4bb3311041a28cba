"""The object store: the same behaviour on file:// and on a real S3 server (SeaweedFS)."""

import io
import os
import urllib.error
import urllib.request

import pytest

from alliance.errors import AccessDenied, InvalidKey, KeyNotFound, StoreError
from alliance.settings import S3Settings
from alliance.store import LocalStore, S3Store, open_store, validate_key
from tests.conftest import s3_settings


def test_put_get_exists_delete(store):
    store.put_bytes("landing/p/d/manifest.json", b'{"a": 1}')
    assert store.exists("landing/p/d/manifest.json")
    assert store.get_bytes("landing/p/d/manifest.json") == b'{"a": 1}'
    assert store.size("landing/p/d/manifest.json") == 8
    store.delete("landing/p/d/manifest.json")
    assert not store.exists("landing/p/d/manifest.json")
    store.delete("landing/p/d/manifest.json")  # deleting twice is not an error


def test_missing_key_is_key_not_found_naming_the_key(store):
    with pytest.raises(KeyNotFound, match="nothing/here.bin"):
        store.get_bytes("nothing/here.bin")


def test_list_prefix_in_key_order_and_not_siblings(store):
    for key in ["a/2.bin", "a/1.bin", "a/sub/3.bin", "ab/4.bin", "b/5.bin"]:
        store.put_bytes(key, key.encode())
    assert [o.key for o in store.list("a/")] == ["a/1.bin", "a/2.bin", "a/sub/3.bin"]
    assert [o.key for o in store.list("a")] == ["a/1.bin", "a/2.bin", "a/sub/3.bin", "ab/4.bin"]
    assert [o.size for o in store.list("b/")] == [len(b"b/5.bin")]
    assert list(store.list("zzz/")) == []


def test_put_if_absent_is_create_only(store):
    assert store.put_if_absent("datasets/x/v1/manifest.json", b"first") is True
    assert store.put_if_absent("datasets/x/v1/manifest.json", b"second") is False
    assert store.get_bytes("datasets/x/v1/manifest.json") == b"first"


@pytest.mark.parametrize("key", ["../etc/passwd", "a/../../b", "/abs/path", "a//b", "", "a/./b", "a\\b", "tab\there"])
def test_bad_keys_are_refused_before_any_write(store, key):
    with pytest.raises(InvalidKey):
        store.put_bytes(key, b"x")
    assert list(store.list("")) == []


def test_validate_key_message_says_why():
    with pytest.raises(InvalidKey, match=r"'\.\.' segments are not allowed"):
        validate_key("clips/../x")


def test_streaming_write_spans_several_parts_and_abort_leaves_nothing(store):
    payload = os.urandom(5 * (1 << 20) + 12345)  # more than one 5 MiB part on S3
    if isinstance(store, S3Store):
        store.part_size = 5 << 20
    with store.open_write("big/object.bin") as writer:
        for start in range(0, len(payload), 1 << 20):
            writer.write(payload[start:start + (1 << 20)])
    assert store.size("big/object.bin") == len(payload)
    with store.open_read("big/object.bin") as reader:
        assert reader.read() == payload

    with pytest.raises(RuntimeError):
        with store.open_write("big/aborted.bin") as writer:
            writer.write(payload)
            raise RuntimeError("producer failed")
    assert not store.exists("big/aborted.bin")
    assert [o.key for o in store.list("big/")] == ["big/object.bin"]


def test_put_file_and_get_file_round_trip(store, tmp_path):
    source = tmp_path / "in.bin"
    source.write_bytes(os.urandom(300_000))
    assert store.put_file("files/in.bin", source) == 300_000
    target = tmp_path / "out" / "copy.bin"
    assert store.get_file("files/in.bin", target) == 300_000
    assert target.read_bytes() == source.read_bytes()
    assert store.put_stream("files/stream.bin", io.BytesIO(b"abc")) == 3


def test_local_store_hides_in_flight_temporary_files(file_store):
    writer = file_store.open_write("x/partial.bin")
    writer.write(b"half")
    assert list(file_store.list("x/")) == []
    writer.abort()
    assert not any(file_store.root.rglob("*partial*"))


def test_presigned_urls_need_s3(file_store):
    with pytest.raises(StoreError, match="presigned URLs need an s3:// store"):
        file_store.presign_get("a/b")


def test_open_store_picks_backend_by_scheme(tmp_path, seaweed):
    from alliance.settings import Settings

    assert isinstance(open_store((tmp_path / "s").as_uri(), Settings()), LocalStore)
    assert isinstance(open_store("s3://bucket/pre", Settings(s3=s3_settings(seaweed))), S3Store)
    with pytest.raises(StoreError, match="unsupported store scheme 'gs'"):
        open_store("gs://bucket", Settings())


# --- S3 only: auth and presigned URLs against the real server


def test_wrong_secret_is_access_denied_naming_bucket_and_key(seaweed, s3_store):
    s3_store.put_bytes("secret/file.txt", b"x")
    wrong = S3Settings(endpoint_url=seaweed.endpoint_url, access_key_id=seaweed.identity("admin").access_key,
                       secret_access_key="not-the-secret", max_attempts=1)
    intruder = S3Store(s3_store.url, wrong)
    with pytest.raises(AccessDenied) as caught:
        intruder.get_bytes("secret/file.txt")
    message = str(caught.value)
    assert message.startswith("access denied")
    assert f"s3://{s3_store.bucket}/{s3_store.prefix}/secret/file.txt" in message
    assert "Traceback" not in message and "botocore" not in message


def test_identity_without_write_right_is_refused(seaweed, s3_store):
    reader = S3Store(s3_store.url, s3_settings(seaweed, "reader"))
    s3_store.put_bytes("shared/a.txt", b"readable")
    assert reader.get_bytes("shared/a.txt") == b"readable"
    with pytest.raises(AccessDenied, match="put"):
        reader.put_bytes("shared/b.txt", b"nope")
    assert not s3_store.exists("shared/b.txt")


def test_presigned_get_and_put_work_and_are_scoped_to_one_key(s3_store):
    put_url = s3_store.presign_put("up/one.bin", expires_s=60)
    request = urllib.request.Request(put_url, data=b"payload", method="PUT")
    request.add_unredirected_header("Content-Type", "")
    urllib.request.urlopen(request).close()
    assert s3_store.get_bytes("up/one.bin") == b"payload"
    with urllib.request.urlopen(s3_store.presign_get("up/one.bin", expires_s=60)) as response:
        assert response.read() == b"payload"
    other = put_url.replace("up/one.bin", "up/two.bin")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(urllib.request.Request(other, data=b"x", method="PUT"))
    assert refused.value.code == 403
    assert not s3_store.exists("up/two.bin")


def test_unreachable_endpoint_is_a_store_error(s3_store):
    dead = S3Store(s3_store.url, S3Settings(endpoint_url="http://127.0.0.1:9", access_key_id="a", secret_access_key="b",
                                            max_attempts=1))
    with pytest.raises(StoreError, match="get s3://"):
        dead.get_bytes("x")

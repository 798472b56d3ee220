"""The local S3 is real SeaweedFS with credentials enforced."""

from __future__ import annotations

import uuid

import boto3
import pytest
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import ClientError

from infra import s3, settings


def _key() -> str:
    return f"test/{uuid.uuid4().hex}"


def test_put_get_roundtrip(s3_prefix):
    uri = s3.join(s3_prefix, "hello.json")
    s3.put_json(uri, {"a": 1})
    assert s3.exists(uri)
    assert s3.get_json(uri) == {"a": 1}
    assert list(s3.list_uris(s3_prefix + "/")) == [uri]
    s3.delete(uri)
    assert not s3.exists(uri)


def test_multipart_upload(s3_service, tmp_path):
    client = s3.client()
    key = _key()
    parts = [bytes([i]) * (5 * 2**20) for i in range(2)] + [b"tail"]
    upload = client.create_multipart_upload(Bucket="micro-budget", Key=key)
    etags = []
    for number, body in enumerate(parts, start=1):
        resp = client.upload_part(Bucket="micro-budget", Key=key, PartNumber=number,
                                  UploadId=upload["UploadId"], Body=body)
        etags.append({"PartNumber": number, "ETag": resp["ETag"]})
    client.complete_multipart_upload(Bucket="micro-budget", Key=key, UploadId=upload["UploadId"],
                                     MultipartUpload={"Parts": etags})
    assert s3.get_bytes(f"s3://micro-budget/{key}") == b"".join(parts)


def _client(access: str | None, secret: str | None):
    cfg = Config(signature_version=UNSIGNED) if access is None else Config(signature_version="s3v4")
    return boto3.client("s3", endpoint_url=settings.s3_settings().endpoint, region_name="us-east-1",
                        aws_access_key_id=access, aws_secret_access_key=secret,
                        config=cfg.merge(Config(s3={"addressing_style": "path"},
                                                retries={"max_attempts": 1})))


def test_anonymous_is_refused(s3_service):
    s3.put_bytes("s3://micro-budget/test/anon.txt", b"x")
    anon = _client(None, None)
    with pytest.raises(ClientError):
        anon.get_object(Bucket="micro-budget", Key="test/anon.txt")
    with pytest.raises(ClientError):
        anon.put_object(Bucket="micro-budget", Key=_key(), Body=b"x")


def test_wrong_secret_is_refused(s3_service):
    good = settings.s3_settings()
    bad = _client(good.access_key, "not-the-secret-key-0000")
    with pytest.raises(ClientError) as err:
        bad.list_objects_v2(Bucket="micro-budget")
    assert err.value.response["Error"]["Code"] in ("SignatureDoesNotMatch", "AccessDenied")


def test_read_only_key_reads_but_cannot_write(s3_service):
    s3.put_bytes("s3://micro-budget/test/ro.txt", b"readable")
    ro = s3.make_client(settings.s3_settings(read_only=True))
    assert ro.get_object(Bucket="micro-budget", Key="test/ro.txt")["Body"].read() == b"readable"
    with pytest.raises(ClientError) as err:
        ro.put_object(Bucket="micro-budget", Key=_key(), Body=b"x")
    assert err.value.response["Error"]["Code"] == "AccessDenied"
    with pytest.raises(ClientError):
        ro.delete_object(Bucket="micro-budget", Key="test/ro.txt")
    assert s3.exists("s3://micro-budget/test/ro.txt")


def test_a_refusal_is_raised_at_once_not_waited_out(s3_prefix, monkeypatch):
    """Only outages are retried (infra/retry.py's s3_outage policy): a missing key or bucket is
    an answer, and reaches the caller without a retry."""
    monkeypatch.setenv("MB_S3_OUTAGE_S", "60")
    before = s3.RETRIED["attempts"]
    with pytest.raises(ClientError, match="NoSuchKey"):
        s3.get_bytes(s3.join(s3_prefix, "missing"))
    with pytest.raises(ClientError, match="NoSuchBucket"):
        s3.get_bytes(f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/x")
    assert s3.RETRIED["attempts"] == before

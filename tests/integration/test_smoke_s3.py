"""S3 (moto): objects, small and multipart, read back byte for byte."""

from __future__ import annotations

import hashlib
import os

import pytest

pytestmark = pytest.mark.integration

MIB = 1024 * 1024
PART_SIZE = 5 * MIB  # S3's minimum size for every part but the last


def test_small_object_round_trips(s3_server, s3_bucket: str) -> None:
    s3 = s3_server.client()
    body = "Lifeboat smoke test: ünïcode and bytes \x00\xff".encode()
    s3.put_object(Bucket=s3_bucket, Key="dir/small.bin", Body=body)

    assert s3.get_object(Bucket=s3_bucket, Key="dir/small.bin")["Body"].read() == body
    listed = s3.list_objects_v2(Bucket=s3_bucket, Prefix="dir/")["Contents"]
    assert [(obj["Key"], obj["Size"]) for obj in listed] == [("dir/small.bin", len(body))]


def test_multipart_upload_reads_back_equal(s3_server, s3_bucket: str) -> None:
    s3 = s3_server.client()
    parts = [os.urandom(PART_SIZE), os.urandom(PART_SIZE), os.urandom(123_457)]
    upload = s3.create_multipart_upload(Bucket=s3_bucket, Key="big.bin")
    completed = []
    for number, data in enumerate(parts, start=1):
        answer = s3.upload_part(Bucket=s3_bucket, Key="big.bin", UploadId=upload["UploadId"], PartNumber=number, Body=data)
        completed.append({"PartNumber": number, "ETag": answer["ETag"]})
    s3.complete_multipart_upload(
        Bucket=s3_bucket, Key="big.bin", UploadId=upload["UploadId"], MultipartUpload={"Parts": completed}
    )

    expected = hashlib.sha256(b"".join(parts)).hexdigest()
    stored = s3.get_object(Bucket=s3_bucket, Key="big.bin")
    assert stored["ContentLength"] == sum(len(part) for part in parts)
    assert hashlib.sha256(stored["Body"].read()).hexdigest() == expected
    # A multipart object's ETag is "<md5 of the part md5s>-<part count>".
    assert stored["ETag"].strip('"').endswith(f"-{len(parts)}")

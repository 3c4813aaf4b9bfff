"""The media store at scale: S3, reached by devices with presigned requests.

The app server signs and checks; it never handles the bytes. An upload is a presigned POST
whose policy pins the object key (`<prefix>/<user>/<device>/<entity>/<ref>`), the declared
Content-Type and a `content-length-range` of 0..max_bytes, so S3 itself refuses a larger file
or another type; a PHI field's policy also requires `x-amz-server-side-encryption: aws:kms`
(with MEDIA_KMS_KEY_ID when set). Completion HEADs the object; a download is a presigned GET
valid for MEDIA_URL_TTL seconds.
"""

from __future__ import annotations

from typing import Any

__all__ = ["S3MediaStore", "parse_s3_url"]


def parse_s3_url(url: str) -> tuple[str, str]:
    """(bucket, prefix) of `s3://bucket/prefix`."""
    rest = url[len("s3://"):]
    bucket, _, prefix = rest.partition("/")
    return bucket, prefix.strip("/")


def _segment(value: str | None) -> str:
    # user ids come from the directory: keep a key segment to what S3 keys carry safely
    text = "".join(c if c.isascii() and (c.isalnum() or c in "-_.@") else "_" for c in (value or "rest"))
    return text[:128] or "_"


class S3MediaStore:
    """Presigned POST uploads and presigned GET downloads in `bucket` under `prefix`."""

    kind = "s3"

    def __init__(self, client, bucket: str, prefix: str = "", *, url_ttl: int = 300, kms_key_id: str | None = None):
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.url_ttl = url_ttl
        self.kms_key_id = kms_key_id

    @classmethod
    def from_config(cls, config) -> "S3MediaStore":
        import boto3
        from botocore.config import Config as BotoConfig
        bucket, prefix = parse_s3_url(str(config["MEDIA_STORE"]))
        # SigV4: the policy of a presigned POST then names its credential fields (AWS's only
        # signature in newer regions)
        client = boto3.client("s3", endpoint_url=config.get("MEDIA_S3_ENDPOINT_URL") or None,
                              # bounded: a request thread waits for S3 seconds, not minutes
                              config=BotoConfig(signature_version="s3v4", connect_timeout=3, read_timeout=10,
                                                retries={"mode": "standard", "max_attempts": 2}))
        return cls(client, bucket, prefix, url_ttl=int(config["MEDIA_URL_TTL"]),
                   kms_key_id=config.get("MEDIA_KMS_KEY_ID") or None)

    def key_for(self, row: Any) -> str:
        parts = [self.prefix] if self.prefix else []
        parts += [_segment(row["user_id"]), _segment(row["device_id"]), _segment(row["entity"]),
                  row["ref"].split(":", 1)[1]]
        return "/".join(parts)

    def upload_target(self, row: Any, content_type: str, max_bytes: int, phi: bool) -> tuple[dict[str, Any], str]:
        """The presigned POST for one object (URL and the form fields to send before `file`),
        and the object's key."""
        key = self.key_for(row)
        fields: dict[str, str] = {"Content-Type": content_type}
        conditions: list[Any] = [["content-length-range", 0, max_bytes], {"Content-Type": content_type}]
        if phi:
            fields["x-amz-server-side-encryption"] = "aws:kms"
            conditions.append({"x-amz-server-side-encryption": "aws:kms"})
            if self.kms_key_id:
                fields["x-amz-server-side-encryption-aws-kms-key-id"] = self.kms_key_id
                conditions.append({"x-amz-server-side-encryption-aws-kms-key-id": self.kms_key_id})
        post = self.client.generate_presigned_post(self.bucket, key, Fields=fields, Conditions=conditions,
                                                   ExpiresIn=self.url_ttl)
        return {"method": "s3-post", "url": post["url"], "fields": post["fields"], "max_bytes": max_bytes,
                "expires_in": self.url_ttl}, key

    def head(self, key: str) -> dict[str, Any] | None:
        """Size, type and encryption of the uploaded object; None when it is not there."""
        from botocore.exceptions import ClientError
        try:
            found = self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return {"size": found["ContentLength"], "content_type": found.get("ContentType") or "",
                "encryption": found.get("ServerSideEncryption")}

    def first_bytes(self, key: str, count: int) -> bytes:
        found = self.client.get_object(Bucket=self.bucket, Key=key, Range=f"bytes=0-{count - 1}")
        return found["Body"].read()

    def remove(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=key)

    def download_url(self, key: str, content_type: str) -> str:
        return self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key, "ResponseContentType": content_type,
                                  "ResponseContentDisposition": "attachment"},
            ExpiresIn=self.url_ttl)

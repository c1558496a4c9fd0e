"""portshift sink plugin for Amazon S3 and S3-compatible stores (``type = "s3"``).

Streams each artifact into the bucket (one PutObject, or a multipart upload when it is larger
than one part), sends the SHA-256 of every request's bytes and compares what S3 confirms, and
aborts what it could not finish. Write-only: it never lists, reads or deletes in the bucket.

A separate ``s3`` reader (``portshift verify --store``) reads an export back with read-only
credentials; the sink never uses it.
"""

from __future__ import annotations

from typing import Any

from portshift import hookimpl, lazy_attributes

__all__ = ["S3Options", "S3Reader", "S3Sink"]


#: the SDK is imported only when a job uses this plugin (registered by reference below);
#: ``from <package> import <Class>`` still works and imports it then
__getattr__ = lazy_attributes(__name__, {"S3Options": "options", "S3Reader": "reader", "S3Sink": "sink"})


@hookimpl
def register_sinks(register: Any) -> None:
    register("s3", "portshift_sink_s3.sink:S3Sink")


@hookimpl
def register_readers(register: Any) -> None:
    register("s3", "portshift_sink_s3.reader:S3Reader")


@hookimpl
def register_key_providers(register: Any) -> None:
    """AWS KMS wraps the data keys of sealed job metadata (``[state] key = "kms:arn:..."``)."""
    register("kms", "portshift_sink_s3.kms:AwsKmsKey")

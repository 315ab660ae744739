"""A local Alibaba Cloud ENS + OSS emulator: the demo, the test bed and the benchmark source.

One loopback port serves three things:

* ``/`` - ENS ``DescribeExportImageInfo`` with real signature checks (ACS3-HMAC-SHA256 and
  RPC HMAC-SHA1), paging, the API's error codes and export-status schedules;
* ``/<bucket>/<key>`` - OSS, path-style, V4-signed (header or presigned URL): object
  GET/HEAD (Range, conditionals, crc64 header), PutObject, DeleteObject, multipart upload
  (UploadPart, UploadPartCopy, ListParts, Complete, Abort, ListMultipartUploads) and
  ListObjects(V2), over the source bucket and any ``--dest-bucket`` (each in its region);
* ``/_emulator/...`` - fault injection and statistics for tests.

Modules, one concern each:

================  ========================================================================
options           command-line options, size parsing, the config it prints
runner            prepare the data root, listen, print, serve until SIGINT/SIGTERM
server            the HTTP server, routing by path, request bodies, connection handling
bodies            sending object bodies: sendfile, or chunks with faults applied
wire              Request/Response values between the server and the API modules
state             the shared per-emulator state (credentials, catalog, objects, faults)
catalog           catalog.json, its live cache, and helpers tests use to shape it
schedule          catalog entries that turn Exported / ExportError after N listings or a time
objects           object files, their metadata (ETag, CRC-64, MD5, type) and sidecars
buckets           buckets and their regions (buckets.json), bucket specs
samples           deterministic qcow2 sample content and plausible catalog entries
ens_auth          ENS signature verification
ens_api           the ENS endpoint
oss_auth          OSS V4 signature verification (header and presigned), per-bucket region
oss_api           the OSS endpoint: routing, object GET/HEAD and their faults
oss_write         PutObject, DeleteObject, write permission, streamed request bodies
multipart         multipart operations and their reply shapes
multipart_store   multipart uploads and parts on disk (survive restarts)
listing           ListObjects and ListObjectsV2
oss_xml           OSS XML answers (errors, results) and request-body parsing
http_rules        Range and conditional-request rules
faults            fault injection state and statistics
control           the ``/_emulator`` control API
================  ========================================================================

CRC-64 combination for multipart objects is :mod:`imagesync.crc64`'s.
"""

from __future__ import annotations

import argparse

from .options import add_arguments

__all__ = ["add_arguments", "run"]


def run(args: argparse.Namespace) -> int:
    """``imagesync emulator``: the server's modules load only when it runs, so that the other
    commands start without them."""
    from .runner import run as serve

    return serve(args)

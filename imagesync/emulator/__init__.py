"""A local Alibaba Cloud ENS + OSS emulator: the demo, the test bed and the benchmark source.

One loopback port serves three things:

* ``/`` - ENS ``DescribeExportImageInfo`` with real signature checks (ACS3-HMAC-SHA256 and
  RPC HMAC-SHA1), paging and the API's error codes;
* ``/<bucket>/<key>`` - OSS objects (GET/HEAD, Range, conditionals, crc64 header) for
  V4-signed requests and V4 presigned URLs;
* ``/_emulator/...`` - fault injection and statistics for tests.

Modules, one concern each:

==============  ==========================================================================
options         command-line options, size parsing, the config it prints
runner          prepare the data root, listen, print, serve until SIGINT/SIGTERM
server          the HTTP server, routing by path, sendfile/chunked object bodies
wire            Request/Response values between the server and the API modules
state           the shared per-emulator state (credentials, catalog, objects, faults)
catalog         catalog.json, its live cache, and helpers tests use to shape it
objects         object files, their metadata (ETag, CRC-64, Last-Modified) and sidecars
samples         deterministic qcow2 sample content and plausible catalog entries
ens_auth        ENS signature verification
ens_api         the ENS endpoint
oss_auth        OSS V4 signature verification (header and presigned)
oss_api         the OSS endpoint
http_rules      Range and conditional-request rules
faults          fault injection state and statistics
control         the ``/_emulator`` control API
==============  ==========================================================================
"""

from .options import add_arguments
from .runner import run

__all__ = ["add_arguments", "run"]

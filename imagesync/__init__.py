"""imagesync: mirror exported Alibaba Cloud ENS images to a backup disk, verified and resumable.

One module per stage, in the order data flows through a run:

    config.py       TOML -> frozen dataclasses, validated with key paths
    credentials.py  config file, environment, aliyun CLI profile (no metadata probing)
    signing.py      ACS3-HMAC-SHA256, RPC HMAC-SHA1 and OSS V4 signatures, pure functions
    ens.py          DescribeExportImageInfo: paging, retries -> ExportedImage records
    plan.py         filters + manifest + destination -> download / resume / replace / skip
    layout.py       where each image goes under the destination, safe from hostile names
    source.py       OSS URL checks, V4 presigning, HEAD and verified ranged GETs
    wire.py         HTTP/1.1 for image GETs: bodies received straight into the caller's buffer
    transfer.py     one image: stream, hash, write, verify, commit; resume and retry
    segments.py     one image in pieces over several connections, CRC-64s combined
    checksum.py     CRC-64/XZ (fastcrc) and sha256 over a stream
    sinks/local.py  partial files, fsync, atomic rename, the run lock
    manifest.py     manifest.json + SHA256SUMS, journaled so updates stay O(1)
    sync.py         the orchestrator: one nursery of workers and one reporter
    progress.py     tqdm bars on a terminal, log lines elsewhere
    summary.py      plan and run summary for people and as JSON
    cli.py          arguments, exit codes, output
    errors.py       the exception tree; every message is one sentence for the user
    emulator/       the local ENS + OSS stand-in for demos, tests and benchmarks
"""

__version__ = "0.1.0"

"""One exception tree whose messages are the sentence the user reads.

    ImagesyncError                 exit code carried by the class
    ├── ConfigError                2  bad file, key, value or command line
    ├── CredentialsError           2  no credentials found, or unreadable profile
    ├── ApiError                   3  the image listing failed (auth, permission, endpoint)
    │   └── MalformedResponseError 3  the API answered something we cannot trust
    ├── LockedError                75 another run holds the lock
    ├── Interrupted                130/143 SIGINT or SIGTERM; partial files stay for resume
    ├── DestinationError           1  the destination cannot be written (permission, bad manifest)
    │   └── DiskFullError          1  stops the run; partial files stay for resume
    └── TransferError              -  one image failed; becomes an outcome, not an exit
        ├── TransientError            a drop, a stall, a 5xx or throttling: pause, then resume
        ├── UrlExpiredError           the presigned URL expired: sign a new one and go on
        ├── SourceChangedError        the object changed under a resume (412): start over
        ├── ChecksumMismatchError     bytes received differ from what OSS publishes
        └── UnsafeSourceError         the URL's scheme or host is not allowed

A missing ``source.region`` (signing needs one and the URL's host does not tell it) is a
`ConfigError`, raised before any object request: every image would fail the same way.

Foreign exceptions (httpx, oss2, OSError) are translated once, where they are raised.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_IMAGE_FAILED = 1
EXIT_USAGE = 2
EXIT_API = 3
EXIT_LOCKED = 75
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


class ImagesyncError(Exception):
    """Base of every error imagesync reports; ``str(error)`` is one user-facing sentence."""

    exit_code = EXIT_IMAGE_FAILED


class ConfigError(ImagesyncError):
    exit_code = EXIT_USAGE


class CredentialsError(ImagesyncError):
    exit_code = EXIT_USAGE


class ApiError(ImagesyncError):
    exit_code = EXIT_API


class MalformedResponseError(ApiError):
    pass


class LockedError(ImagesyncError):
    exit_code = EXIT_LOCKED


class DestinationError(ImagesyncError):
    exit_code = EXIT_IMAGE_FAILED


class DiskFullError(DestinationError):
    """Stops the whole run: no other image can be written either."""


class Interrupted(ImagesyncError):
    """SIGINT or SIGTERM: stop now, keep partial files for the next run."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class TransferError(ImagesyncError):
    """One image could not be mirrored; the run goes on with the others."""


class TransientError(TransferError):
    """A dropped connection, a stall, a 5xx or throttling: retry from the current offset after a pause."""


class UrlExpiredError(TransferError):
    """OSS says the presigned URL has expired: sign a new one and go on."""


class SourceChangedError(TransferError):
    pass


class ChecksumMismatchError(TransferError):
    pass


class UnsafeSourceError(TransferError):
    pass

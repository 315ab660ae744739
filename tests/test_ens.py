"""The ENS client over scripted answers (httpx.MockTransport): paging, retries, refusals.

The same behaviours are proven end to end against the emulator in tests/test_cli_list.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import trio

from imagesync.credentials import Credentials
from imagesync.ens import EnsClient, ExportedImage
from imagesync.errors import ApiError, MalformedResponseError
from imagesync.retry import RetryPolicy

CREDENTIALS = Credentials(access_key_id="ak", access_key_secret="sk", origin="test")


def image(n: int, status: str = "Exported") -> dict[str, str]:
    return {
        "ImageId": f"m-{n:05d}", "ImageName": f"img-{n}", "ImageExportStatus": status,
        "ExportedImageURL": f"https://b.oss-cn-hangzhou.aliyuncs.com/m-{n:05d}.qcow2?sig=1",
        "Platform": "centos", "Architecture": "x86_64", "CreationTime": "2024-01-01T00:00:00Z",
        "ImageOwnerAlias": "self",
    }


def paged(total: int, per_page: Callable[[int], list[dict[str, Any]]] | None = None) -> Callable[..., Any]:
    def handler(request: httpx.Request) -> httpx.Response:
        number = int(request.url.params["PageNumber"])
        size = int(request.url.params["PageSize"])
        rows = per_page(number) if per_page else [image(n) for n in range((number - 1) * size, min(total, number * size))]
        return httpx.Response(200, json={"RequestId": "r", "PageNumber": number, "PageSize": size,
                                         "TotalCount": total, "Images": {"Image": rows}})
    return handler


async def list_with(handler: Callable[..., Any], attempts: int = 4) -> list[ExportedImage]:
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        client = EnsClient(http, endpoint="https://ens.test", credentials=CREDENTIALS,
                           retry=RetryPolicy(max_attempts=attempts, base_delay_s=0))
        return await client.list_images()


async def test_pages_are_all_fetched_and_deduplicated() -> None:
    images = await list_with(paged(120))
    assert [i.image_id for i in images] == [f"m-{n:05d}" for n in range(120)]
    # An image that moves between pages while listing shows up twice: keep one.
    pages = {1: [image(n) for n in range(50)], 2: [image(1)] + [image(n) for n in range(50, 59)]}
    duplicated = await list_with(paged(59, pages.__getitem__))
    assert sorted(i.image_id for i in duplicated) == [f"m-{n:05d}" for n in range(59)]


async def test_a_duplicate_standing_in_for_a_missed_image_is_an_error() -> None:
    """An add plus a delete while paging: 60 rows arrive, but one is a repeat and m-00059 was never seen."""
    pages = {1: [image(n) for n in range(50)], 2: [image(1)] + [image(n) for n in range(50, 59)]}
    with pytest.raises(MalformedResponseError, match="listed 59 distinct images where TotalCount promised 60"):
        await list_with(paged(60, pages.__getitem__))


async def test_a_short_listing_is_an_error() -> None:
    """A server that pages differently than asked must not make images look deleted."""
    with pytest.raises(MalformedResponseError, match="listed 20 distinct images where TotalCount promised 100"):
        await list_with(paged(100, lambda number: [image(number * 10 + n) for n in range(10)]))


async def test_request_is_signed_with_acs3() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return paged(0)(request)

    await list_with(handler)
    headers = seen[0].headers
    assert headers["authorization"].startswith("ACS3-HMAC-SHA256 Credential=ak,SignedHeaders=host;")
    assert headers["x-acs-action"] == "DescribeExportImageInfo"
    assert headers["x-acs-version"] == "2017-11-10"
    assert seen[0].method == "POST"


async def test_public_url_drops_the_query() -> None:
    images = await list_with(paged(1))
    assert images[0].public_url == "https://b.oss-cn-hangzhou.aliyuncs.com/m-00000.qcow2"


def flaky(failures: list[httpx.Response | Exception]) -> Callable[..., Any]:
    def handler(request: httpx.Request) -> httpx.Response:
        if failures:
            failure = failures.pop(0)
            if isinstance(failure, Exception):
                raise failure
            return failure
        return paged(3)(request)
    return handler


def ens_error(status: int, code: str, **headers: str) -> httpx.Response:
    body = {"RequestId": "REQ-1", "HostId": "ens", "Code": code, "Message": f"{code} happened."}
    return httpx.Response(status, json=body, headers=headers)


async def test_retries_throttling_5xx_and_transport_errors() -> None:
    failures: list[httpx.Response | Exception] = [
        ens_error(400, "Throttling.User", **{"x-acs-retry-after": "50"}),
        ens_error(503, "ServiceUnavailable"),
        httpx.ConnectError("refused"),
    ]
    assert len(await list_with(flaky(failures))) == 3
    assert failures == []


async def test_retry_after_is_honoured(autojump_clock: trio.testing.MockClock) -> None:
    failures: list[httpx.Response | Exception] = [ens_error(400, "Throttling", **{"x-acs-retry-after": "7000"})]
    start = trio.current_time()
    await list_with(flaky(failures))
    assert trio.current_time() - start >= 7


async def test_no_sleep_after_the_last_attempt(autojump_clock: trio.testing.MockClock) -> None:
    """Two attempts, each asking for 60 s: one wait between them, none after the last one."""
    start = trio.current_time()
    with pytest.raises(ApiError, match="gave up after 2 attempts"):
        await list_with(lambda request: ens_error(400, "Throttling", **{"x-acs-retry-after": "60000"}), attempts=2)
    assert 60 <= trio.current_time() - start < 61


class FixedDelay:
    """A retry policy that always waits 10 s, so every sleep shows on the clock."""

    max_attempts = 2

    def delay_s(self, attempt: int, retry_after_s: float | None = None) -> float:
        return 10.0


async def test_no_sleep_after_the_last_transport_failure(autojump_clock: trio.testing.MockClock) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    start = trio.current_time()
    async with httpx.AsyncClient(transport=httpx.MockTransport(refuse)) as http:
        client = EnsClient(http, endpoint="https://ens.test", credentials=CREDENTIALS,
                           retry=FixedDelay())  # type: ignore[arg-type]
        with pytest.raises(ApiError, match="gave up after 2 attempts"):
            await client.list_images()
    assert trio.current_time() - start == 10


@pytest.mark.parametrize("value", ["\u00b2", "\u0663", "1_000", " 12 ", "-5", "1e3", "9" * 40, "99999999999"])
async def test_odd_retry_after_values_are_ignored_or_bounded(
    value: str, autojump_clock: trio.testing.MockClock
) -> None:
    """Non-ASCII digits pass str.isdigit() and once crashed int(); a huge hint is capped."""
    failures: list[httpx.Response | Exception] = [
        httpx.Response(400, json={"Code": "Throttling", "Message": "slow down"},
                       headers=[(b"x-acs-retry-after", value.encode())])
    ]
    start = trio.current_time()
    assert len(await list_with(flaky(failures))) == 3
    assert trio.current_time() - start <= 120


async def test_deeply_nested_json_is_a_malformed_answer() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(MalformedResponseError, match="JSON nested too deeply to read") as caught:
        await list_with(lambda request: httpx.Response(200, content=deep))
    assert caught.value.exit_code == 3
    # The same nesting in an error answer still ends in one ApiError sentence.
    with pytest.raises(ApiError, match="HTTP 400"):
        await list_with(lambda request: httpx.Response(400, content=b'{"Code":' + deep + b"}"))


async def test_server_strings_are_plain_text_in_messages() -> None:
    """No repr quoting or escaping here: the output layer escapes what it prints."""
    body = {"RequestId": "R-\u00e9", "Code": "Forbidden.X", "Message": "line1\nline2 'q'"}
    with pytest.raises(ApiError) as caught:
        await list_with(lambda request: httpx.Response(403, json=body))
    assert "line1\nline2 'q'" in str(caught.value)
    assert "R-\u00e9" in str(caught.value)


async def test_throttling_storm_gives_up_with_a_sentence() -> None:
    with pytest.raises(ApiError) as caught:
        await list_with(lambda request: ens_error(400, "Throttling.User"), attempts=3)
    assert "Throttling.User" in str(caught.value)
    assert "gave up after 3 attempts" in str(caught.value)


@pytest.mark.parametrize(
    ("status", "code", "hint"),
    [
        (400, "SignatureDoesNotMatch", "check the access key secret"),
        (404, "InvalidAccessKeyId.NotFound", "check the access key id"),
        (400, "NoPermission", "grant ens:DescribeExportImageInfo"),
        (403, "Forbidden.RAM", "grant ens:DescribeExportImageInfo"),
        (400, "InvalidTimeStamp.Expired", "clock"),
    ],
)
async def test_fatal_codes_are_not_retried(status: int, code: str, hint: str) -> None:
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return ens_error(status, code)

    with pytest.raises(ApiError) as caught:
        await list_with(handler)
    assert calls == [1]
    text = str(caught.value)
    assert code in text and "REQ-1" in text and f"{code} happened" in text and hint in text
    assert caught.value.exit_code == 3


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"<html>proxy error</html>", "not JSON"),
        (json.dumps([1, 2]).encode(), "expected a JSON object"),
        (json.dumps({"TotalCount": "3"}).encode(), 'TotalCount is the string "3"'),
        (json.dumps({"TotalCount": 1, "Images": "oops"}).encode(), "Images.Image is not a list"),
        (json.dumps({"TotalCount": 1, "Images": {"Image": [{**image(1), "ImageId": 7}]}}).encode(),
         "Images.Image[0].ImageId is the number 7"),
        (json.dumps({"TotalCount": 1, "Images": {"Image": [{"ImageId": "m-1"}]}}).encode(),
         "ImageExportStatus is missing"),
        (json.dumps({"TotalCount": 1, "Images": {"Image": ["m-1"]}}).encode(), "Images.Image[0] is not an object"),
    ],
)
async def test_malformed_answers(body: bytes, message: str) -> None:
    with pytest.raises(MalformedResponseError) as caught:
        await list_with(lambda request: httpx.Response(200, content=body))
    assert message in str(caught.value)
    assert caught.value.exit_code == 3


# --- what -v shows, and what the one sentence leaves out ---------------------------------


@pytest.fixture
def debug_lines() -> Any:
    import logging

    class Lines(logging.Handler):
        def __init__(self) -> None:
            super().__init__(logging.DEBUG)
            self.lines: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.lines.append(record.getMessage())

    logger = logging.getLogger("imagesync")
    handler, level = Lines(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler.lines
    logger.removeHandler(handler)
    logger.setLevel(level)


STS = Credentials(access_key_id="ak", access_key_secret="sk-SECRET", security_token="TOKEN-xyz", origin="test")
SIGNED_ECHO = ("Specified signature is not matched with our calculation. server string to sign is:"
               "ACS3-HMAC-SHA256\n" + "a" * 64 + "\nx-acs-security-token:TOKEN-xyz\nsecret sk-SECRET")


@pytest.mark.parametrize(
    ("message", "sentence"),
    [
        (SIGNED_ECHO, "Specified signature is not matched with our calculation"),
        ("Specified signature is not matched with our calculation. Server canonical request is: 'POST\\n/\\n'",
         "Specified signature is not matched with our calculation"),
        ("The request signature does not conform to Aliyun standards. server string to sign is:GET&%2F&",
         "The request signature does not conform to Aliyun standards"),
        ("StringToSign: POST&%2F&x", "the server computed another signature"),
    ],
)
async def test_signing_echoes_are_cut_from_the_sentence(message: str, sentence: str, debug_lines: list[str]) -> None:
    body = {"RequestId": "REQ-9", "Code": "SignatureDoesNotMatch", "Message": message}
    async with httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(400, json=body))) as http:
        client = EnsClient(http, endpoint="https://ens.test", credentials=STS, retry=RetryPolicy(base_delay_s=0))
        with pytest.raises(ApiError) as caught:
            await client.list_images()
    text = str(caught.value)
    assert text == (f"ENS refused DescribeExportImageInfo with SignatureDoesNotMatch (HTTP 400): {sentence} "
                    "(RequestId REQ-9); check the access key secret; run with -v to see what the server signed")
    # -v shows the server's whole message, with our secret and token blanked out
    [whole] = [line for line in debug_lines if "REQ-9" in line]
    assert whole.startswith("ENS answered SignatureDoesNotMatch (HTTP 400, RequestId REQ-9) with the message: ")
    assert message.replace("TOKEN-xyz", "<redacted>").replace("sk-SECRET", "<redacted>") in whole
    assert "TOKEN-xyz" not in whole and "sk-SECRET" not in whole


async def test_other_messages_are_kept_whole(debug_lines: list[str]) -> None:
    body = {"RequestId": "R", "Code": "Forbidden.RAM", "Message": "You are not authorized. Ask your admin."}
    with pytest.raises(ApiError) as caught:
        await list_with(lambda request: httpx.Response(403, json=body))
    assert "You are not authorized. Ask your admin (RequestId R)" in str(caught.value)
    assert "-v" not in str(caught.value)


async def test_each_retry_is_shown_with_its_cause_and_wait(debug_lines: list[str]) -> None:
    seen: list[httpx.Request] = []
    failures: list[httpx.Response | Exception] = [
        ens_error(400, "Throttling.User", **{"x-acs-retry-after": "50"}),
        ens_error(503, "ServiceUnavailable"),
        httpx.ConnectError("refused"),
        httpx.ReadTimeout(""),
    ]
    handler = flaky(failures)

    def recording(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)  # type: ignore[no-any-return]

    async with httpx.AsyncClient(transport=httpx.MockTransport(recording)) as http:
        client = EnsClient(http, endpoint="https://ens.test", credentials=STS,
                           retry=RetryPolicy(max_attempts=6, base_delay_s=0))
        await client.list_images()
    retries = [line for line in debug_lines if line.startswith("ENS retry")]
    assert retries == [
        "ENS retry 2/6 after Throttling.User (HTTP 400): waiting 0.1 s",
        "ENS retry 3/6 after ServiceUnavailable (HTTP 503): waiting 0.0 s",
        "ENS retry 4/6 after ConnectError (refused): waiting 0.0 s",
        "ENS retry 5/6 after ReadTimeout: waiting 0.0 s",
    ]
    signatures = {r.headers["authorization"].rsplit("Signature=", 1)[1] for r in seen}
    for line in debug_lines:
        assert not any(s in line for s in signatures | {"sk-SECRET", "TOKEN-xyz"}), line


async def test_listing_reports_how_far_it_got() -> None:
    heard: list[tuple[int, int]] = []
    async with httpx.AsyncClient(transport=httpx.MockTransport(paged(120))) as http:
        client = EnsClient(http, endpoint="https://ens.test", credentials=CREDENTIALS,
                           retry=RetryPolicy(base_delay_s=0))
        await client.list_images(on_page=lambda listed, total: heard.append((listed, total)))
    assert heard[0] == (50, 120) and heard[-1] == (120, 120) and len(heard) == 3  # a count per page

"""The metrics file: what node_exporter's textfile collector reads, and how it is replaced."""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from imagesync import metrics
from imagesync.errors import DestinationError
from imagesync.metrics import RunMetrics, write_run_metrics, write_verify_metrics

EVERY_SYNC_GAUGE = {
    "imagesync_last_run_start_timestamp_seconds",
    "imagesync_last_run_end_timestamp_seconds",
    "imagesync_last_success_timestamp_seconds",
    "imagesync_last_run_duration_seconds",
    "imagesync_last_run_exit_code",
    "imagesync_last_run_images",
    "imagesync_last_run_bytes_transferred",
}
VERIFY_GAUGES = {"imagesync_last_verify_timestamp_seconds", "imagesync_last_verify_problems"}


def run(start: float = 1_764_597_809.25, end: float = 1_764_598_409.75, exit_code: int = 0) -> RunMetrics:
    return RunMetrics(
        start=start, end=end, exit_code=exit_code,
        mirrored=3, skipped=5, failed=0 if exit_code == 0 else 1, bytes_transferred=7 * 2**30,
    )


def parse(path: Path) -> dict[tuple[str, str | None], float]:
    """Every sample as (name, outcome label) -> value, checking HELP, TYPE and no timestamps."""
    samples: dict[tuple[str, str | None], float] = {}
    for family in text_string_to_metric_families(path.read_text()):
        assert family.type == "gauge", family.name
        assert family.documentation, family.name
        for sample in family.samples:
            assert sample.timestamp is None, sample
            assert set(sample.labels) <= {"outcome"}, sample
            key = (sample.name, sample.labels.get("outcome"))
            assert key not in samples, f"duplicate sample {key}"
            samples[key] = sample.value
    return samples


def names(samples: dict[tuple[str, str | None], float]) -> set[str]:
    return {name for name, _ in samples}


@pytest.fixture
def prom(tmp_path: Path) -> Path:
    return tmp_path / "textfile" / "imagesync.prom"


@pytest.fixture(autouse=True)
def _folder(prom: Path) -> None:
    prom.parent.mkdir()


def test_a_sync_run_writes_every_sync_gauge(prom: Path) -> None:
    write_run_metrics(prom, run())
    samples = parse(prom)
    assert names(samples) == EVERY_SYNC_GAUGE
    assert samples[("imagesync_last_run_start_timestamp_seconds", None)] == 1_764_597_809.25
    assert samples[("imagesync_last_run_end_timestamp_seconds", None)] == 1_764_598_409.75
    assert samples[("imagesync_last_success_timestamp_seconds", None)] == 1_764_598_409.75
    assert samples[("imagesync_last_run_duration_seconds", None)] == 600.5
    assert samples[("imagesync_last_run_exit_code", None)] == 0
    assert samples[("imagesync_last_run_images", "mirrored")] == 3
    assert samples[("imagesync_last_run_images", "skipped")] == 5
    assert samples[("imagesync_last_run_images", "failed")] == 0
    assert samples[("imagesync_last_run_bytes_transferred", None)] == 7 * 2**30


def test_the_text_has_help_and_type_lines_and_plain_numbers(prom: Path) -> None:
    write_run_metrics(prom, run())
    text = prom.read_text()
    assert text.endswith("\n")
    for name in EVERY_SYNC_GAUGE:
        assert f"# HELP {name} " in text
        assert f"# TYPE {name} gauge\n" in text
    assert "imagesync_last_run_bytes_transferred 7516192768\n" in text
    assert 'imagesync_last_run_images{outcome="failed"} 0\n' in text


def test_a_failing_run_keeps_the_last_success(prom: Path) -> None:
    write_run_metrics(prom, run(start=1000.0, end=1100.0))
    write_run_metrics(prom, run(start=2000.0, end=2100.0, exit_code=1))
    samples = parse(prom)
    assert samples[("imagesync_last_success_timestamp_seconds", None)] == 1100.0
    assert samples[("imagesync_last_run_end_timestamp_seconds", None)] == 2100.0
    assert samples[("imagesync_last_run_exit_code", None)] == 1
    assert samples[("imagesync_last_run_images", "failed")] == 1
    write_run_metrics(prom, run(start=3000.0, end=3100.0))
    assert parse(prom)[("imagesync_last_success_timestamp_seconds", None)] == 3100.0


def test_a_host_that_never_succeeded_reports_zero(prom: Path) -> None:
    write_run_metrics(prom, run(exit_code=3))
    assert parse(prom)[("imagesync_last_success_timestamp_seconds", None)] == 0


@pytest.mark.parametrize(
    "previous",
    [
        "imagesync_last_success_timestamp_seconds NaN\n",
        "imagesync_last_success_timestamp_seconds -5\n",
        "imagesync_last_success_timestamp_seconds 12abc\n",
        "imagesync_last_success_timestamp_seconds 1e999\n",
        "imagesync_last_success_timestamp_seconds 100 1700000000000\n",
        'imagesync_last_success_timestamp_seconds{outcome="mirrored"} 100\n',
        " imagesync_last_success_timestamp_seconds 100\n",
        "imagesync_last_success_timestamp_seconds  100\n",
        "imagesync_last_success_timestamp_seconds 1_000\n",
        "\x00\xff garbage \n",
        "",
    ],
)
def test_garbage_in_the_previous_file_is_ignored(prom: Path, previous: str) -> None:
    prom.write_text(previous + "other_metric 5\n")
    write_run_metrics(prom, run(exit_code=1))
    samples = parse(prom)
    assert samples[("imagesync_last_success_timestamp_seconds", None)] == 0
    assert names(samples) == EVERY_SYNC_GAUGE


def test_a_previous_file_in_a_wrong_place_does_not_stop_the_write(prom: Path) -> None:
    prom.write_bytes(b"\xff\xfe" * 10 + b"\nimagesync_last_success_timestamp_seconds 42\n")
    write_run_metrics(prom, run(exit_code=1))
    assert parse(prom)[("imagesync_last_success_timestamp_seconds", None)] == 42


def test_a_sync_run_keeps_the_verify_gauges(prom: Path) -> None:
    write_verify_metrics(prom, at=1500.5, problems=2)
    write_run_metrics(prom, run(exit_code=1))
    samples = parse(prom)
    assert names(samples) == EVERY_SYNC_GAUGE | VERIFY_GAUGES
    assert samples[("imagesync_last_verify_timestamp_seconds", None)] == 1500.5
    assert samples[("imagesync_last_verify_problems", None)] == 2


def test_a_verify_run_keeps_the_sync_gauges(prom: Path) -> None:
    write_run_metrics(prom, run(start=1000.0, end=1100.0))
    write_run_metrics(prom, run(start=2000.0, end=2100.0, exit_code=1))
    before = parse(prom)
    write_verify_metrics(prom, at=2500.0, problems=0)
    after = parse(prom)
    assert {k: v for k, v in after.items() if k[0] in EVERY_SYNC_GAUGE} == before
    assert after[("imagesync_last_verify_timestamp_seconds", None)] == 2500.0
    assert after[("imagesync_last_verify_problems", None)] == 0
    write_verify_metrics(prom, at=2600.0, problems=1)
    assert parse(prom)[("imagesync_last_verify_problems", None)] == 1


def test_a_verify_run_alone_writes_only_verify_gauges(prom: Path) -> None:
    write_verify_metrics(prom, at=10.0, problems=0)
    assert names(parse(prom)) == VERIFY_GAUGES


def test_the_file_has_mode_0644_whatever_the_umask(prom: Path) -> None:
    old = os.umask(0o077)
    try:
        write_run_metrics(prom, run())
    finally:
        os.umask(old)
    assert stat.S_IMODE(prom.stat().st_mode) == 0o644


@pytest.fixture
def temporary_names(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records the random parts the writer asks for; preset entries are handed out first."""
    preset: list[str] = []
    given: list[str] = []

    def token_hex(nbytes: int | None = None) -> str:
        token = preset.pop(0) if preset else f"{len(given):016x}"
        given.append(token)
        return token

    monkeypatch.setattr(secrets, "token_hex", token_hex)  # the module metrics.py draws from
    return preset


def test_the_temporary_name_is_hidden_and_not_prom(
    prom: Path, temporary_names: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[Path] = []
    real_replace = Path.replace

    def spy(self: Path, target: str | os.PathLike[str]) -> Path:
        seen.append(self)
        assert self.exists()
        return real_replace(self, target)

    monkeypatch.setattr(Path, "replace", spy)
    write_run_metrics(prom, run())
    [temporary] = seen
    assert temporary.parent == prom.parent
    assert temporary.name.startswith(".imagesync.prom.tmp-")
    assert not temporary.name.endswith(".prom")
    assert sorted(p.name for p in prom.parent.iterdir()) == ["imagesync.prom"]


def test_a_symlink_planted_at_the_temporary_name_is_not_followed(
    prom: Path, tmp_path: Path, temporary_names: list[str]
) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    planted = prom.parent / ".imagesync.prom.tmp-planted"
    planted.symlink_to(victim)
    dangling = prom.parent / ".imagesync.prom.tmp-dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    temporary_names[:] = ["planted", "dangling"]
    write_run_metrics(prom, run())
    assert victim.read_text() == "precious\n"
    assert not (tmp_path / "nowhere").exists()
    assert planted.is_symlink() and dangling.is_symlink()
    assert names(parse(prom)) == EVERY_SYNC_GAUGE


def test_only_symlinks_at_every_attempt_end_in_one_sentence(
    prom: Path, tmp_path: Path, temporary_names: list[str]
) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    for i in range(metrics.TEMPORARY_ATTEMPTS):
        (prom.parent / f".imagesync.prom.tmp-{i:016x}").symlink_to(victim)
    with pytest.raises(DestinationError, match=r"^cannot write metrics file .*imagesync\.prom: File exists$"):
        write_run_metrics(prom, run())
    assert victim.read_text() == "precious\n"
    assert not prom.exists()


def test_a_missing_folder_is_one_sentence(tmp_path: Path) -> None:
    target = tmp_path / "absent" / "imagesync.prom"
    with pytest.raises(DestinationError) as caught:
        write_verify_metrics(target, at=1.0, problems=0)
    assert str(caught.value) == f"cannot write metrics file {target}: No such file or directory"


def test_a_failed_rename_leaves_no_temporary_behind(prom: Path) -> None:
    prom.mkdir()  # renaming a file over a directory fails
    with pytest.raises(DestinationError, match=r"^cannot write metrics file .*: Is a directory$"):
        write_run_metrics(prom, run())
    assert [p.name for p in prom.parent.iterdir()] == ["imagesync.prom"]

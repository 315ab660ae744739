"""`imagesync list` and the failure sentences of issue 2, end to end against the emulator."""

from __future__ import annotations

from pathlib import Path

from clitools import imagesync, one_sentence, write_config


def test_list_json_reports_every_image_with_its_status(emulator, tmp_path: Path) -> None:
    config = write_config(emulator, tmp_path / "sync.toml", tmp_path / "mirror")
    result = imagesync("list", "-c", config, "--json")
    assert result.returncode == 0, result.stderr
    import json

    listed = {image["image_id"]: image for image in json.loads(result.stdout)}
    catalog = {entry["ImageId"]: entry for entry in emulator.catalog()}
    assert listed.keys() == catalog.keys()
    for image_id, entry in catalog.items():
        assert listed[image_id]["status"] == entry["ImageExportStatus"]
        exported = entry["ImageExportStatus"] == "Exported"
        assert bool(listed[image_id]["url"]) == exported
        assert "?" not in listed[image_id]["url"]
    assert {"Exported", "Exporting", "ExportError", "Unexported"} <= {i["status"] for i in listed.values()}


def test_list_table(emulator, tmp_path: Path) -> None:
    config = write_config(emulator, tmp_path / "sync.toml", tmp_path / "mirror")
    result = imagesync("list", "-c", config)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].split() == ["ID", "NAME", "STATUS", "PLATFORM", "ARCH", "CREATED", "URL"]
    assert "Exported" in result.stdout and "images:" in result.stdout


def test_wrong_secret_exits_3_with_the_api_code(emulator, tmp_path: Path) -> None:
    config = write_config(emulator, tmp_path / "sync.toml", tmp_path / "mirror", credentials={"access_key_secret": "wrong"})
    result = imagesync("list", "-c", config)
    assert result.returncode == 3
    line = one_sentence(result)
    assert "SignatureDoesNotMatch" in line and "RequestId" in line
    assert "wrong" not in line


def test_unknown_key_id_exits_3(emulator, tmp_path: Path) -> None:
    config = write_config(emulator, tmp_path / "sync.toml", tmp_path / "mirror", credentials={"access_key_id": "nobody"})
    result = imagesync("list", "-c", config)
    assert result.returncode == 3
    assert "InvalidAccessKeyId.NotFound" in one_sentence(result)


def test_unreachable_endpoint_exits_3(tmp_path: Path) -> None:
    config = tmp_path / "sync.toml"
    config.write_text(
        '[ens]\nendpoint = "http://127.0.0.1:9"\nmax_attempts = 2\n'
        '[credentials]\naccess_key_id = "a"\naccess_key_secret = "b"\n'
        '[destination]\nurl = "mirror"\n'
    )
    config.chmod(0o600)
    result = imagesync("list", "-c", config)
    assert result.returncode == 3
    line = one_sentence(result)
    assert "cannot reach the ENS endpoint http://127.0.0.1:9" in line and "2 attempts" in line


def test_malformed_config_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "sync.toml"
    config.write_text('[destination]\nurl = "mirror"\n[transfer]\nconcurrency = "many"\n')
    result = imagesync("list", "-c", config)
    assert result.returncode == 2
    assert "transfer.concurrency must be an integer" in one_sentence(result)


def test_missing_credentials_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "sync.toml"
    config.write_text('[destination]\nurl = "mirror"\n')
    result = imagesync("list", "-c", config, home=tmp_path)
    assert result.returncode == 2
    assert "no Alibaba Cloud credentials found" in one_sentence(result)


def test_throttling_storm_exits_3(emulator, tmp_path: Path) -> None:
    config = write_config(emulator, tmp_path / "sync.toml", tmp_path / "mirror", ens={"max_attempts": 3})
    emulator.faults(ens_throttle=100)
    result = imagesync("list", "-c", config)
    assert result.returncode == 3
    line = one_sentence(result)
    assert "Throttling" in line and "gave up after 3 attempts" in line


def test_brief_throttling_is_ridden_out(emulator, tmp_path: Path) -> None:
    config = write_config(emulator, tmp_path / "sync.toml", tmp_path / "mirror")
    emulator.faults(ens_throttle=2, ens_retry_after_ms=50)
    result = imagesync("list", "-c", config, "--json")
    assert result.returncode == 0, result.stderr


def test_malformed_api_answer_exits_3(emulator, tmp_path: Path) -> None:
    config = write_config(emulator, tmp_path / "sync.toml", tmp_path / "mirror")
    emulator.faults(ens_malformed=1)
    result = imagesync("list", "-c", config)
    assert result.returncode == 3
    assert "malformed" in one_sentence(result) or "not JSON" in result.stderr


def test_help_everywhere() -> None:
    for command in ([], ["sync"], ["list"], ["emulator"]):
        result = imagesync(*command, "--help")
        assert result.returncode == 0 and "usage:" in result.stdout
    assert imagesync("--version").stdout.startswith("imagesync ")


def test_a_missing_signing_region_stops_the_run_before_any_object_request(emulator, tmp_path: Path) -> None:
    """Once every image failed with the same sentence; now the run stops at the first (exit 2)."""
    config = write_config(emulator, tmp_path / "sync.toml", tmp_path / "mirror", source={"region": None})
    emulator.reset()
    result = imagesync("sync", "-c", config)
    assert result.returncode == 2, result.stderr
    line = one_sentence(result)
    assert "set source.region" in line
    assert emulator.stats()["oss_requests"] == 0
    assert not (tmp_path / "mirror").exists() or not any((tmp_path / "mirror").rglob("*.qcow2"))


def test_an_endpoint_override_off_oss_exits_2_naming_the_key(emulator, tmp_path: Path) -> None:
    config = write_config(emulator, tmp_path / "sync.toml", tmp_path / "mirror",
                          source={"endpoint_override": "collector.evil.example"})
    result = imagesync("list", "-c", config)
    assert result.returncode == 2
    assert "source.endpoint_override = 'collector.evil.example' is not valid" in one_sentence(result)


def test_concurrency_flag_has_the_config_bound(emulator, tmp_path: Path) -> None:
    config = write_config(emulator, tmp_path / "sync.toml", tmp_path / "mirror")
    result = imagesync("sync", "-c", config, "--concurrency", "1000", "--dry-run")
    assert result.returncode == 2
    assert "--concurrency 1000 is not valid; expected a number from 1 to 64" in one_sentence(result)


def test_a_relative_destination_follows_the_config_file(emulator, tmp_path: Path) -> None:
    """`url = "mirror"` means beside the config file, wherever imagesync is started from."""
    (tmp_path / "conf").mkdir()
    config = write_config(emulator, tmp_path / "conf" / "sync.toml", Path("mirror"))
    result = imagesync("sync", "-c", config, "--json")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "conf" / "mirror" / "manifest.json").exists()

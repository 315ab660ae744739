"""Path templating: hostile names stay inside the destination, and every image gets its own file."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path, PurePosixPath

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imagesync.destination import PARTIAL_SUFFIX, RESERVED_NAMES, STATE_SUFFIX
from imagesync.ens import ExportedImage
from imagesync.errors import ConfigError, DestinationError
from imagesync.layout import (
    assign_paths,
    render_path,
    resolve_inside,
    template_problem,
)

UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def image(image_id: str = "m-1", image_name: str = "web", **fields: str) -> ExportedImage:
    values = {"status": "Exported", "url": f"https://b.oss-cn-beijing.aliyuncs.com/{image_id}",
              "platform": "centos", "architecture": "x86_64",
              "creation_time": "2024-01-01T00:00:00Z", "owner_alias": "self"} | fields
    return ExportedImage(image_id=image_id, image_name=image_name, **values)


def named(name: str, template: str = "{image_name}.qcow2") -> str:
    return str(render_path(template, image(image_name=name)))


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("web", "web.qcow2"),
        ("../../etc/x", "_.._.._etc_x.qcow2"),
        ("a/b", "a_b.qcow2"),
        ("a\\b", "a_b.qcow2"),
        ("a\0b", "a_b.qcow2"),
        ("a\nb\r", "a_b_.qcow2"),
        ("\x7f\x85\x9b\u2028\u2029", "_____.qcow2"),
        ("\ud800x", "_x.qcow2"),
        (".hidden", "_.hidden.qcow2"),
        ("-rf", "-rf.qcow2"),
        ("CentOS 7 (prod)", "CentOS 7 (prod).qcow2"),
        ("x.qcow2.imagesync-part", "x.qcow2.imagesync-part.qcow2"),
    ],
)
def test_hostile_names_under_the_default_style(name: str, expected: str) -> None:
    assert named(name) == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (".", "_"),
        ("..", "_"),
        ("", "_"),
        ("...", "_"),
        ("x. . .", "x"),
        (".hidden", "_.hidden"),
        ("manifest.json", "manifest.json_"),
        ("MANIFEST.JSON", "MANIFEST.JSON_"),
        ("SHA256SUMS", "SHA256SUMS_"),
        ("manifest.journal", "manifest.journal_"),
        (".imagesync.lock", "_.imagesync.lock"),
        ("x.qcow2.imagesync-part", "x.qcow2.imagesync-part_"),
        ("x.qcow2.IMAGESYNC-STATE", "x.qcow2.IMAGESYNC-STATE_"),
        ("x.qcow2.imagesync-part.", "x.qcow2.imagesync-part_"),
    ],
)
def test_whole_component_names(name: str, expected: str) -> None:
    assert named(name, "{image_name}") == expected


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{image_id}.qcow2", "m-1.qcow2"),
        ("{platform}/{architecture}/{image_id}.qcow2", "centos/x86_64/m-1.qcow2"),
        ("{image_name}/{image_id}.qcow2", "web/m-1.qcow2"),
        ("/{image_id}", "_/m-1"),
        ("a//{image_id}/", "a/_/m-1/_"),
        ("{image_id}.imagesync-part", "m-1.imagesync-part_"),
        ("{image_id:/>6}.qcow2", "___m-1.qcow2"),
        ("{{{image_id}}}", "{m-1}"),
        ("manifest.json/{image_id}", "manifest.json_/m-1"),
        ("x/manifest.json", "x/manifest.json"),
    ],
)
def test_templates(template: str, expected: str) -> None:
    assert str(render_path(template, image())) == expected


def test_slashes_in_values_never_make_folders() -> None:
    path = render_path("{platform}/{image_id}.qcow2", image(platform="a/../b", image_id="c/d"))
    assert path.parts == ("a_.._b", "c_d.qcow2")


def test_empty_value_is_a_placeholder_folder() -> None:
    assert str(render_path("{platform}/{image_id}", image(platform=""))) == "_/m-1"


@pytest.mark.parametrize("template", ["{name}.qcow2", "{image_id.upper}", "{image_id", "{0}", "{}",
                                      "{image_id.__class__}", "{image_id[0]}", "{image_id!r}", "{image_id!a}",
                                      "{image_id:{image_name}}", "{image_id:>999999999}", "{image_id:d}", ""])
def test_bad_template_is_a_config_error(template: str) -> None:
    with pytest.raises(ConfigError, match="path template"):
        render_path(template, image())


@pytest.mark.parametrize(
    ("name", "unit"),
    [("a" * 300, "a"), ("😀" * 100, "😀"), ("漢" * 100, "漢"), ("e\u0301" * 100, "e\u0301")],
)
def test_long_names_are_cut_on_character_boundaries_keeping_the_extension(
    name: str, unit: str
) -> None:
    result = named(name)
    assert 190 <= len(result.encode()) <= 200
    assert result.endswith(".qcow2")
    stem = result.removesuffix(".qcow2")
    assert stem == unit * (len(stem) // len(unit))  # whole characters, marks kept with their base


def test_long_extension_is_part_of_the_name() -> None:
    result = named("x." + "y" * 300, "{image_name}")
    assert len(result.encode()) <= 200
    assert result.startswith("x.yyy")


def test_rendering_is_deterministic() -> None:
    hostile = image(image_name="../\0é" * 50)
    assert render_path("{image_name}/{image_id}", hostile) == render_path(
        "{image_name}/{image_id}", hostile
    )


def assigned(template: str, *images: ExportedImage, existing: dict[str, str] | None = None
             ) -> dict[str, str]:
    return {k: str(v) for k, v in assign_paths(template, images, existing).items()}


def test_same_name_gets_the_later_image_id_before_the_extension() -> None:
    result = assigned("{image_name}.qcow2", image("m-2", "web"), image("m-1", "web"),
                      image("m-3", "web"))
    assert result == {"m-1": "web.qcow2", "m-2": "web-m-2.qcow2", "m-3": "web-m-3.qcow2"}


@pytest.mark.parametrize("other", ["WEB", "Web", "wEb"])
def test_names_differing_only_in_case_collide(other: str) -> None:
    result = assigned("{image_name}.qcow2", image("m-1", "web"), image("m-2", other))
    assert result == {"m-1": "web.qcow2", "m-2": f"{other}-m-2.qcow2"}


def test_canonically_equivalent_unicode_names_collide() -> None:
    composed, decomposed = "caf\u00e9", unicodedata.normalize("NFD", "caf\u00e9")
    result = assigned("{image_name}", image("m-1", composed), image("m-2", decomposed))
    assert result == {"m-1": composed, "m-2": f"{decomposed}-m-2"}


def test_recorded_images_keep_their_path_when_the_template_changes() -> None:
    existing = {"m-1": "m-1.qcow2", "m-2": "web.qcow2"}
    result = assigned("{image_name}.qcow2", image("m-1", "web"), image("m-2", "web"),
                      image("m-3", "web"), existing=existing)
    assert result == {"m-1": "m-1.qcow2", "m-2": "web.qcow2", "m-3": "web-m-3.qcow2"}


def test_paths_of_unlisted_recorded_images_stay_reserved() -> None:
    existing = {"m-0": "web.qcow2", "m-9": "web-m-2.qcow2"}
    result = assigned("{image_name}.qcow2", image("m-2", "web"), existing=existing)
    assert result == {"m-2": "web-m-2-2.qcow2"}


def test_a_file_never_sits_where_a_folder_is_needed() -> None:
    result = assigned("{image_name}/{image_id}.qcow2", image("m-2", "a"), existing={"m-1": "a"})
    assert result == {"m-2": "a-m-2/m-2.qcow2"}


def test_a_folder_never_sits_where_a_file_is_needed() -> None:
    result = assigned("{image_name}", image("m-2", "A"), existing={"m-1": "a/b.qcow2"})
    assert result == {"m-2": "A-m-2"}


@pytest.mark.parametrize("bad", ["../x.qcow2", "/etc/x", "manifest.json", "x.imagesync-part", ""])
def test_unsafe_recorded_paths_are_rendered_afresh(bad: str) -> None:
    assert assigned("{image_id}.qcow2", image("m-1"), existing={"m-1": bad}) == {"m-1": "m-1.qcow2"}


def test_clashing_recorded_paths_keep_the_first() -> None:
    existing = {"m-1": "x.qcow2", "m-2": "X.qcow2"}
    result = assigned("{image_id}.qcow2", image("m-1"), image("m-2"), existing=existing)
    assert result == {"m-1": "x.qcow2", "m-2": "m-2.qcow2"}


def test_hostile_image_id_in_a_collision_tag() -> None:
    result = assigned("{image_name}", image("m-1", "web"), image("z/../\n" * 40, "web"))
    tagged = PurePosixPath(result["z/../\n" * 40])
    assert len(tagged.parts) == 1
    assert tagged.name.startswith("web-")
    assert not UNSAFE.search(tagged.name)


@pytest.mark.parametrize("relative", ["a", "a/b.qcow2", "-x", "a/./b"])
def test_resolve_inside_accepts_names_inside(tmp_path: Path, relative: str) -> None:
    assert resolve_inside(tmp_path, PurePosixPath(relative)) == tmp_path / relative


@pytest.mark.parametrize("relative", ["../x", "/etc/passwd", "a/../../x", "", ".", "a/..", "a\0b"])
def test_resolve_inside_refuses_names_outside(tmp_path: Path, relative: str) -> None:
    with pytest.raises(DestinationError, match="refusing"):
        resolve_inside(tmp_path, PurePosixPath(relative))


def test_resolve_inside_keeps_a_relative_root() -> None:
    assert resolve_inside(Path("dest"), PurePosixPath("a/b")) == Path("dest/a/b")


TEMPLATES = st.sampled_from([
    "{image_id}.qcow2",
    "{image_name}.qcow2",
    "{image_name}",
    "{platform}/{architecture}/{image_name}-{image_id}.qcow2",
    "/{image_name}//{image_id}/",
    "{image_name}/{image_id}",
    "{image_name}.{platform}",
])
FIELD = st.text(st.characters(codec=None), max_size=260) | st.sampled_from(
    ["", ".", "..", "../..", "manifest.json", ".imagesync.lock", "a.imagesync-part", "😀" * 70]
)


def check_path(path: PurePosixPath) -> None:
    assert not path.is_absolute()
    assert path.parts
    for part in path.parts:
        assert part not in ("", ".", "..")
        assert not part.startswith(".")
        assert not part.endswith((" ", "."))
        assert not UNSAFE.search(part)
        assert "\\" not in part
        assert len(part.encode()) <= 200
        assert not part.casefold().endswith((PARTIAL_SUFFIX, STATE_SUFFIX))
    assert path.parts[0].casefold() not in {name.casefold() for name in RESERVED_NAMES}
    assert resolve_inside(Path("/dest"), path).is_relative_to("/dest")


@given(TEMPLATES, FIELD, FIELD, FIELD, FIELD)
def test_any_field_value_renders_a_safe_path(
    template: str, image_id: str, name: str, platform: str, architecture: str
) -> None:
    check_path(render_path(template, image(image_id, name, platform=platform,
                                           architecture=architecture)))


NAMES = st.text(st.sampled_from("aAbB./\\-\u00e9\u0301 "), max_size=6)
IDS = st.text(st.sampled_from("mM-12./"), min_size=1, max_size=5)


def folded_key(path: PurePosixPath) -> tuple[str, ...]:
    return tuple(unicodedata.normalize("NFC", unicodedata.normalize("NFD", p).casefold())
                 for p in path.parts)


def clash(a: PurePosixPath, b: PurePosixPath) -> bool:
    """Same file, or one would need the other to be a folder."""
    ka, kb = folded_key(a), folded_key(b)
    return ka[: len(kb)] == kb or kb[: len(ka)] == ka


@given(TEMPLATES, st.lists(st.tuples(IDS, NAMES), max_size=12),
       st.dictionaries(IDS, st.text(st.sampled_from("aAbB/.-"), max_size=8), max_size=6))
def test_assigned_paths_are_unique_and_never_nested(
    template: str, pairs: list[tuple[str, str]], existing: dict[str, str]
) -> None:
    paths = assign_paths(template, [image(image_id, name) for image_id, name in pairs], existing)
    assert set(paths) == {image_id for image_id, _ in pairs}
    assigned = list(paths.items())
    for i, (_, path) in enumerate(assigned):
        assert not any(clash(path, other) for _, other in assigned[i + 1:])
    for image_id, path in assigned:
        if image_id not in existing or PurePosixPath(existing[image_id]) != path:
            check_path(path)
    safe = {k: PurePosixPath(v) for k, v in existing.items()
            if PurePosixPath(v).parts and ".." not in PurePosixPath(v).parts
            and not v.startswith("/")}
    clean = {k: v for k, v in safe.items()
             if not any(clash(v, PurePosixPath(o)) for j, o in existing.items() if j != k)}
    for image_id, path in clean.items():
        if image_id in paths:
            assert paths[image_id] == path
        assert not any(clash(path, other) for j, other in assigned if j != image_id)


@given(TEMPLATES, st.lists(st.text(st.sampled_from("mM-1./\\\n"), min_size=1, max_size=6),
                           min_size=2, max_size=6, unique=True))
def test_collision_tags_are_as_safe_as_rendered_names(template: str, ids: list[str]) -> None:
    paths = assign_paths(template, [image(image_id, "same") for image_id in ids])
    for path in paths.values():
        check_path(path)


TEMPLATE_PIECES = st.sampled_from([*"{}!:.[]0s>r/_x 9", "image_id", "image_name", "platform"])


@settings(deadline=None)
@given(st.lists(TEMPLATE_PIECES, max_size=12).map("".join))
def test_the_load_check_and_the_renderer_agree(template: str) -> None:
    """One check: a template the config accepts renders for any image; one it refuses never does."""
    problem = template_problem(template)
    try:
        check_path(render_path(template, image(image_name="n", platform="p")))
    except ConfigError:
        assert problem is not None
    else:
        assert problem is None

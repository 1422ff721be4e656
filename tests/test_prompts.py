import json

import pytest

from spr import formats
from spr.data.records import Region
from spr.errors import UserError
from spr.prompts import BUILTIN, crop_box_for, hints_text, load_templates, render, select_templates

REGION = Region(
    id="r1",
    image="a.png",
    image_size=[640, 480],
    region_box=[100.4, 50.6, 420.2, 300.0],
    objects=[
        {"label": "red box", "box": [100.4, 50.6, 200, 150]},
        {"label": "dog", "box": [300, 200, 420.2, 300]},
        {"label": "red box", "box": [210, 60, 260, 120]},
    ],
)


def test_builtin_prompts_cover_the_three_views_of_the_paper():
    assert set(BUILTIN) == {"region_box", "crop", "hints"}
    assert {t.view for t in BUILTIN.values()} == {"full", "crop"}
    assert all("box" in t.template for t in BUILTIN.values())  # each asks for boxes


def test_full_image_prompt_writes_the_region_in_the_models_format():
    p = render(BUILTIN["region_box"], REGION, "qwen2_vl")
    assert p.crop_box is None and p.view_size == (640, 480)
    assert formats.format_box(REGION.region_box, "qwen2_vl", image_size=(640, 480)) in p.text
    assert "<|box_start|>(157,105),(657,625)<|box_end|>" in p.text


def test_crop_prompt_shows_only_the_region():
    p = render(BUILTIN["crop"], REGION, "qwen2_vl")
    assert p.crop_box == [100, 50, 421, 300] == crop_box_for(REGION.region_box, (640, 480))
    assert p.view_size == (321, 250)
    assert "{" not in p.text


def test_hints_prompt_lists_the_annotated_labels():
    assert hints_text(REGION.objects) == "2 red box, 1 dog"
    assert "2 red box, 1 dog" in render(BUILTIN["hints"], REGION, "qwen2_vl").text


def test_region_in_a_crop_template_is_in_crop_coordinates(tmp_path):
    (tmp_path / "t.json").write_text(
        json.dumps([{"id": "c", "view": "crop", "template": "Describe {region}."}])
    )
    (t,) = load_templates(tmp_path / "t.json")
    p = render(t, REGION, "qwen2_vl")
    # The region fills the crop [100, 50, 421, 300] but for the integer border: (0.4, 0.6, 320.2, 250) in it.
    assert p.text == "Describe <|box_start|>(1,2),(998,1000)<|box_end|>."


def test_geometry_is_recorded_and_used():
    calls = []

    def geometry(size):
        calls.append(size)
        return {"input_size": [size[0] // 28 * 28, size[1] // 28 * 28]}

    p = render(BUILTIN["crop"], REGION, "qwen2_vl", geometry)
    assert calls == [(321, 250)] and p.geometry == {"input_size": [308, 224]}


def test_templates_from_json_and_yaml(tmp_path):
    yaml_text = "- id: short\n  view: full\n  template: 'Region {region}: describe it with boxes.'\n"
    (tmp_path / "p.yaml").write_text(yaml_text)
    (tmp_path / "p.json").write_text(
        json.dumps([{"id": "mine", "view": "crop", "template": "Boxes for {hints}."}])
    )
    chosen = select_templates(f"crop,{tmp_path / 'p.yaml'},{tmp_path / 'p.json'}")
    assert [t.id for t in chosen] == ["crop", "short", "mine"]
    assert [t.id for t in select_templates(None)] == list(BUILTIN)


@pytest.mark.parametrize(
    "data, message",
    [
        ([{"id": "x", "view": "side", "template": "t"}], "view must be one of full, crop"),
        ([{"id": "x", "view": "full", "template": "t {box}"}], "only {region} and {hints}"),
        ([{"id": "x", "view": "full"}], "entry 1 must have the keys id, view and template"),
        ({"id": "x"}, "expected a non-empty list"),
    ],
)
def test_bad_templates_are_named(data, message, tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match=message.replace("{", r"\{").replace("}", r"\}")):
        load_templates(path)


def test_unknown_and_duplicate_prompt_ids(tmp_path):
    with pytest.raises(UserError, match="unknown prompt 'nope'"):
        select_templates("nope")
    with pytest.raises(UserError, match="repeated: crop"):
        select_templates("crop,crop")
    (tmp_path / "bad.json").write_text("[{not json")
    with pytest.raises(UserError, match="bad.json: not valid JSON"):
        select_templates(str(tmp_path / "bad.json"))


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
            + "".join(f"{n}: &{n} [{', '.join([f'*{p}'] * 10)}]\n" for p, n in zip("abcdef", "bcdefg")),
            "aliases",
        ),
        (b"- {id: x, view: full, template: \xff}\n", "not UTF-8"),
        ("[" * 200 + "]" * 200, "nested more than"),
    ],
    ids=["alias bomb", "not UTF-8", "deep nesting"],
)
def test_a_hostile_yaml_template_file_is_one_line_not_a_hang(text, message, tmp_path):
    path = tmp_path / "t.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(UserError, match=message):
        load_templates(path)

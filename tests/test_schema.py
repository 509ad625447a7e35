"""Strict recipe loading: every user mistake is a RecipeError naming the key and what was wanted."""

from __future__ import annotations  # the schema must resolve string annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

import pytest
import yaml

from genlab.core.errors import RecipeError
from genlab.core.schema import (
    apply_overrides,
    blame,
    build,
    describe,
    load,
    load_yaml,
    override_keys,
    param,
    parse_override,
    to_dict,
)


@dataclass
class ModelCfg:
    channels: list[int] = param([16, 32], help="conv channels per stage", ge=1)
    latent: int = param(8, help="size of the code", ge=1)
    loss: Literal["mse", "bce"] = param("mse", help="reconstruction loss")
    kernel: tuple[int, ...] = param((3, 3), help="kernel size per stage")


@dataclass
class TrainCfg:
    lr: float = param(1e-3, help="learning rate", gt=0)
    steps: int = param(100, help="optimizer steps", ge=1)
    amp: bool = param(False, help="mixed precision")
    dropout: float = param(0.0, help="dropout probability", ge=0, lt=1)
    warmup: Optional[int] = param(  # noqa: UP045 - typing.Optional must work too
        None, help="warm-up steps, null for none"
    )
    decay: float | None = param(None, help="weight decay")

    def __post_init__(self):
        if self.warmup is not None and self.warmup > self.steps:
            raise ValueError(f"warmup ({self.warmup}) must not exceed steps ({self.steps})")


@dataclass
class Recipe:
    name: str = param(help="run name")  # required
    model: ModelCfg = param(default_factory=ModelCfg, help="the network")
    train: TrainCfg = param(default_factory=TrainCfg, help="the optimisation")
    data_root: Path | None = param(None, help="data folder", must_exist=True)
    tags: dict[str, float] = param({}, help="free numeric tags")
    extra: Any = param(None, help="anything, unchecked")


def err(cls, data, path="") -> RecipeError:
    with pytest.raises(RecipeError) as info:
        build(cls, data, path)
    return info.value


# ------------------------------------------------------------------ build: happy paths
def test_defaults_fill_and_nested_sections_build():
    r = build(Recipe, {"name": "x", "model": {"latent": 4}})
    assert r.model == ModelCfg(latent=4)
    assert r.train == TrainCfg()
    assert r.data_root is None and r.tags == {}


def test_sub_dataclass_builds_with_a_path_prefix():
    assert build(ModelCfg, None, "model") == ModelCfg()
    e = err(ModelCfg, {"latent": 0}, "model")
    assert e.key == "model.latent"


def test_scientific_string_is_accepted_as_float():
    # PyYAML (YAML 1.1) reads 3e-4 as the *string* '3e-4'.
    data = yaml.safe_load("lr: 3e-4\nsteps: 1e3\n")
    assert data["lr"] == "3e-4"
    t = build(TrainCfg, data)
    assert t.lr == pytest.approx(3e-4) and isinstance(t.lr, float)
    assert t.steps == 1000 and isinstance(t.steps, int)


def test_int_accepted_for_float_and_integral_float_for_int():
    t = build(TrainCfg, {"lr": 1, "steps": 20.0})
    assert t.lr == 1.0 and isinstance(t.lr, float)
    assert t.steps == 20 and isinstance(t.steps, int)


def test_tuple_field_from_list_and_any_passthrough():
    r = build(Recipe, {"name": "x", "model": {"kernel": [5, 3, 3]}, "extra": {"a": [1]}})
    assert r.model.kernel == (5, 3, 3)
    assert r.extra == {"a": [1]}


# ------------------------------------------------------------------ build: errors
def test_unknown_key_suggests_closest_and_lists_allowed():
    e = err(Recipe, {"name": "x", "model": {"chanels": [8]}})
    assert e.key == "model.chanels"
    assert e.message == (
        "unknown key 'chanels'; did you mean 'channels'? (allowed: channels, latent, loss, kernel)"
    )


def test_unknown_key_without_close_match_has_no_suggestion():
    e = err(TrainCfg, {"zzzz": 1})
    assert e.key == "zzzz" and "did you mean" not in e.message and "allowed: lr," in e.message


def test_missing_required_key_is_named():
    e = err(Recipe, {"model": {}})
    assert e.key == "name"
    assert e.message.startswith("missing required key")
    assert "run name" in e.message


def test_wrong_type_names_key_expected_and_found():
    e = err(Recipe, {"name": "x", "train": {"lr": "abc"}})
    assert e.key == "train.lr"
    assert e.message == "expected a number (float), got 'abc' (str)"
    assert str(e) == "train.lr: expected a number (float), got 'abc' (str)"


def test_negative_lr_violates_gt_zero():
    e = err(Recipe, {"name": "x", "train": {"lr": -0.001}})
    assert (e.key, e.message) == ("train.lr", "expected a number > 0, got -0.001")


def test_two_bounds_are_both_stated():
    e = err(TrainCfg, {"dropout": 1.0}, "train")
    assert (e.key, e.message) == ("train.dropout", "expected a number >= 0 and < 1, got 1.0")


def test_list_element_error_names_the_index():
    e = err(Recipe, {"name": "x", "model": {"channels": [8, 16, "x"]}})
    assert e.key == "model.channels[2]"
    assert "expected an integer (int), got 'x' (str)" == e.message
    e = err(Recipe, {"name": "x", "model": {"channels": [8, 0]}})  # ge=1 applies per item
    assert (e.key, e.message) == ("model.channels[1]", "expected a number >= 1, got 0")


def test_list_field_is_strict_about_scalars():
    e = err(ModelCfg, {"channels": 8}, "model")
    assert (e.key, e.message) == ("model.channels", "expected a list, got 8 (int)")


@pytest.mark.parametrize("value", [True, False])
def test_bool_is_not_an_int_or_float(value):
    assert "(bool)" in err(TrainCfg, {"steps": value}).message
    assert "(bool)" in err(TrainCfg, {"lr": value}).message


def test_int_is_not_a_bool_and_non_integral_float_is_not_an_int():
    e = err(TrainCfg, {"amp": 1})
    assert (e.key, e.message) == ("amp", "expected true or false (bool), got 1 (int)")
    e = err(TrainCfg, {"steps": 2.5})
    assert e.message == "expected an integer (int), got 2.5 (float)"


def test_number_words_are_not_numbers():
    for word in ("nan", "inf", "1_000", "0x10", " 1"):
        assert err(TrainCfg, {"lr": word}).key == "lr"


def test_string_field_refuses_a_number_and_says_to_quote():
    e = err(Recipe, {"name": 2024})
    assert e.key == "name" and "got 2024 (int)" in e.message and "quotes" in e.message


def test_literal_lists_allowed_values_and_suggests():
    e = err(Recipe, {"name": "x", "model": {"loss": "mes"}})
    assert e.key == "model.loss"
    assert e.message == "expected one of 'mse', 'bce', got 'mes' (str); did you mean 'mse'?"


def test_optional_accepts_null_and_reports_both_options():
    assert build(TrainCfg, {"warmup": None, "decay": 0.1}).decay == 0.1
    e = err(TrainCfg, {"warmup": "soon"})
    assert e.message == "expected an integer (int) or null, got 'soon' (str)"


def test_dict_field_checks_values_with_a_dotted_key():
    assert build(Recipe, {"name": "x", "tags": {"a": 1}}).tags == {"a": 1.0}
    e = err(Recipe, {"name": "x", "tags": {"a": "no"}})
    assert e.key == "tags.a"


def test_non_mapping_where_a_section_is_expected():
    e = err(Recipe, {"name": "x", "model": [1, 2]})
    assert (e.key, e.message) == ("model", "expected a mapping of keys, got a list")
    assert err(Recipe, [1]).message == "expected a mapping of keys, got a list"


def test_missing_path_named_and_existing_one_accepted(tmp_path):
    e = err(Recipe, {"name": "x", "data_root": str(tmp_path / "nope")})
    assert e.key == "data_root"
    assert e.message == f"file or folder not found: '{tmp_path / 'nope'}'"
    r = build(Recipe, {"name": "x", "data_root": str(tmp_path)})
    assert r.data_root == tmp_path and isinstance(r.data_root, Path)


def test_post_init_value_error_becomes_recipe_error_at_the_section():
    e = err(Recipe, {"name": "x", "train": {"warmup": 500, "steps": 100}})
    assert e.key == "train"
    assert e.message == "warmup (500) must not exceed steps (100)"


def test_param_requires_help_and_copies_mutable_defaults():
    with pytest.raises(TypeError):
        param(1, help="")
    a, b = ModelCfg(), ModelCfg()
    a.channels.append(64)
    assert b.channels == [16, 32]


# ------------------------------------------------------------------ to_dict and round trip
def test_round_trip_through_yaml_gives_an_equal_instance(tmp_path):
    r = build(
        Recipe,
        {
            "name": "run",
            "model": {"channels": [4, 8], "loss": "bce", "kernel": [5]},
            "train": {"lr": "3e-4", "warmup": 10, "amp": True},
            "data_root": str(tmp_path),
            "tags": {"t": 2},
            "extra": {"k": [1, "two"]},
        },
    )
    plain = to_dict(r)
    assert plain["data_root"] == str(tmp_path) and plain["model"]["kernel"] == [5]
    text = yaml.safe_dump(plain, sort_keys=False)  # plain python only, or this raises
    (tmp_path / "recipe.yaml").write_text(text)
    assert build(Recipe, load_yaml(tmp_path / "recipe.yaml")) == r


# ------------------------------------------------------------------ overrides
def test_parse_override_reads_values_as_yaml():
    assert parse_override("train.lr=3e-4") == (["train", "lr"], "3e-4")
    assert parse_override("model.channels=[32,64]") == (["model", "channels"], [32, 64])
    assert parse_override("train.amp=true") == (["train", "amp"], True)
    assert parse_override("train.warmup=null") == (["train", "warmup"], None)
    assert parse_override("data.mode=hard") == (["data", "mode"], "hard")
    assert parse_override("name=a=b") == (["name"], "a=b")


@pytest.mark.parametrize("text", ["train.lr", "=3", "train..lr=1", "train.=1", ""])
def test_malformed_override(text):
    with pytest.raises(RecipeError) as info:
        parse_override(text)
    e = info.value
    assert (e.key, e.message, e.where) == (text, "expected key.path=value", "--set")


def test_apply_overrides_sets_creates_and_copies():
    data = {"name": "x", "train": {"lr": 0.1}, "model": None}
    out = apply_overrides(
        data, ["train.lr=3e-4", "train.amp=yes", "model.channels=[1, 2]", "new.deep.key=1"]
    )
    assert out["train"] == {"lr": "3e-4", "amp": True}
    assert out["model"] == {"channels": [1, 2]}
    assert out["new"] == {"deep": {"key": 1}}
    assert data == {"name": "x", "train": {"lr": 0.1}, "model": None}  # input untouched
    assert apply_overrides(None, ["a=1"]) == {"a": 1}


def test_override_inside_a_scalar_is_an_error():
    with pytest.raises(RecipeError) as info:
        apply_overrides({"train": {"lr": 1}}, ["train.lr.x=2"])
    assert info.value.key == "train.lr" and info.value.where == "--set"


def test_override_typo_gets_did_you_mean_and_blames_set():
    overrides = ["train.lrr=0.1"]
    data = apply_overrides({"name": "x"}, overrides)
    with pytest.raises(RecipeError) as info:
        build(Recipe, data)
    e = blame(info.value, override_keys(overrides), "recipe.yaml")
    assert e.where == "--set" and e.key == "train.lrr"
    assert "did you mean 'lr'?" in e.message
    assert str(e).startswith("--set: train.lrr: unknown key 'lrr'")


def test_load_attributes_errors_to_file_or_set(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("name: x\ntrain:\n  lr: 0.1\n")
    r = load(Recipe, f, ["train.lr=3e-4", "model.latent=2"])
    assert r.train.lr == pytest.approx(3e-4) and r.model.latent == 2
    with pytest.raises(RecipeError) as info:
        load(Recipe, f, ["train.lr=-1"])
    assert info.value.where == "--set" and info.value.key == "train.lr"
    with pytest.raises(RecipeError) as info:
        load(Recipe, f, ["tran.lr=1"])  # typo in the section: still the override's fault
    assert info.value.where == "--set" and "did you mean 'train'?" in info.value.message
    f.write_text("name: x\ntrain:\n  lr: 0\n")
    with pytest.raises(RecipeError) as info:
        load(Recipe, f, ["model.latent=2"])
    assert info.value.where == str(f) and info.value.key == "train.lr"


# ------------------------------------------------------------------ YAML files
def test_missing_recipe_file(tmp_path):
    with pytest.raises(RecipeError) as info:
        load_yaml(tmp_path / "nope.yaml")
    e = info.value
    assert (e.key, e.message, e.where) == ("", "recipe file not found", str(tmp_path / "nope.yaml"))


def test_malformed_yaml_reports_line_and_column(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("name: x\ntrain:\n  lr: 0.1\n    steps: 3\n")
    with pytest.raises(RecipeError) as info:
        load_yaml(f)
    assert info.value.where == str(f)
    assert info.value.message.startswith("malformed YAML at line 4, column 10: ")


@pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n"])
def test_empty_recipe(tmp_path, text):
    f = tmp_path / "empty.yaml"
    f.write_text(text)
    with pytest.raises(RecipeError, match="recipe is empty"):
        load_yaml(f)


def test_top_level_must_be_a_mapping(tmp_path):
    f = tmp_path / "list.yaml"
    f.write_text("- a\n- b\n")
    with pytest.raises(RecipeError) as info:
        load_yaml(f)
    assert info.value.message == "expected a mapping of keys at the top level, got a list"


def test_duplicate_key_is_an_error(tmp_path):
    f = tmp_path / "dup.yaml"
    f.write_text("name: x\ntrain:\n  lr: 0.1\n  lr: 0.2\n")
    with pytest.raises(RecipeError) as info:
        load_yaml(f)
    assert info.value.key == "train.lr"
    assert info.value.message == "duplicate key at line 4 (first at line 3)"


def test_deeply_nested_recipe_is_refused_before_parsing(tmp_path):
    """A 6 KB file of nested brackets used to end in a RecursionError traceback."""
    f = tmp_path / "deep.yaml"
    f.write_text("family: ae\ndescription: " + "[" * 3000 + "]" * 3000 + "\n")
    with pytest.raises(RecipeError, match="nests lists or mappings deeper than 32 levels"):
        load_yaml(f)
    block = "".join("  " * i + f"k{i}:\n" for i in range(40)) + "  " * 40 + "v: 1\n"
    f.write_text(block)  # block style nests the same way
    with pytest.raises(RecipeError, match="deeper than 32 levels"):
        load_yaml(f)
    ok = "".join("  " * i + f"k{i}:\n" for i in range(10)) + "  " * 10 + "v: 1\n"
    f.write_text(ok)
    assert load_yaml(f)["k0"]["k1"]["k2"]


def test_deeply_nested_override_is_refused():
    with pytest.raises(RecipeError) as info:
        parse_override("description=" + "[" * 3000 + "]" * 3000)
    assert info.value.where == "--set" and "deeper than 32 levels" in info.value.message


def test_oversized_or_irregular_recipe_is_refused(tmp_path):
    f = tmp_path / "big.yaml"
    f.write_text("description: [" + ",".join(["1"] * 600_000) + "]\n")  # 1.2 MB
    with pytest.raises(RecipeError, match="larger than 1024 KiB"):
        load_yaml(f)
    with pytest.raises(RecipeError, match="not a regular file"):
        load_yaml("/dev/zero")


# ------------------------------------------------------------------ describe
def test_describe_lists_every_key_with_type_default_and_help():
    rows = describe(Recipe)
    by_key = {r[0]: r for r in rows}
    assert by_key["name"] == ("name", "str", "required", "run name")
    assert by_key["model"] == ("model", "ModelCfg", "{...}", "the network")
    assert by_key["model.channels"] == (
        "model.channels",
        "list[int] (>= 1)",
        "[16, 32]",
        "conv channels per stage",
    )
    assert by_key["model.loss"][1:3] == ("'mse' | 'bce'", "'mse'")
    assert by_key["model.kernel"][1:3] == ("tuple[int, ...]", "[3, 3]")
    assert by_key["train.lr"] == ("train.lr", "float (> 0)", "0.001", "learning rate")
    assert by_key["train.warmup"][1:3] == ("int | null", "null")
    assert by_key["data_root"][1] == "path | null (must exist)"
    assert [r[0] for r in rows][:3] == ["name", "model", "model.channels"]
    assert all(r[3] for r in rows)  # every key documented
    assert describe(TrainCfg, "train")[0][0] == "train.lr"

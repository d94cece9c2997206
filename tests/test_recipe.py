import pytest

from edgekit.errors import EdgekitError
from edgekit.recipe import Recipe, load_recipe, recipe_from_dict


def test_presets_load_and_every_field_has_a_default():
    digits = load_recipe("digits")
    assert digits.name == "digits" and digits.data.dataset == "digits"
    assert digits.prune.target_macs_ratio == 0.2 and digits.compare.image_size == 224
    imagenet = load_recipe("imagenet")
    assert imagenet.data.dataset == "imagefolder" and imagenet.data.image_size == 224
    assert recipe_from_dict({}) == Recipe()


def test_unknown_key_is_rejected_with_the_valid_keys():
    with pytest.raises(EdgekitError, match=r"unknown key 'prune\.ratio'.*target_macs_ratio"):
        recipe_from_dict({"prune": {"ratio": 0.5}})
    with pytest.raises(EdgekitError, match=r"unknown key 'epoch'"):
        recipe_from_dict({"epoch": 3})


def test_types_and_choices_are_checked():
    with pytest.raises(EdgekitError, match=r"distill\.alpha must be float"):
        recipe_from_dict({"distill": {"alpha": "high"}})
    with pytest.raises(EdgekitError, match=r"prune\.allocation must be one of global, uniform"):
        recipe_from_dict({"prune": {"allocation": "l3"}})
    # read from the runner registry and its plugins' entry points, not copied into the recipe
    with pytest.raises(EdgekitError, match=r"prune\.latency_backend must be one of onnxruntime-cpu, tensorrt, "
                                           r"torch-cuda, got 'cuda'"):
        recipe_from_dict({"prune": {"latency_backend": "cuda"}})
    with pytest.raises(EdgekitError, match=r"data must be a mapping"):
        recipe_from_dict({"data": 3})
    with pytest.raises(EdgekitError, match=r"target_macs_ratio must be in"):
        recipe_from_dict({"prune": {"target_macs_ratio": 1.5}})
    with pytest.raises(EdgekitError, match=r"data\.root is required"):
        recipe_from_dict({"data": {"dataset": "imagefolder"}})
    # bool is not an int, even though Python says so
    with pytest.raises(EdgekitError, match=r"teacher\.epochs must be int"):
        recipe_from_dict({"teacher": {"epochs": True}})


def test_flags_override_the_file_and_are_validated_the_same_way():
    recipe = load_recipe("digits", ["distill.alpha=0.25", "prune.method=bn_scale", "data.root=/x"])
    assert recipe.distill.alpha == 0.25 and recipe.prune.method == "bn_scale" and recipe.data.root == "/x"
    assert recipe.distill.temperature == 4.0  # untouched fields keep the preset's value
    with pytest.raises(EdgekitError, match=r"unknown key 'distill\.alpah'"):
        load_recipe("digits", ["distill.alpah=0.3"])
    with pytest.raises(EdgekitError, match=r"--set expects key=value"):
        load_recipe("digits", ["distill.alpha"])


def test_recipe_files(tmp_path):
    with pytest.raises(EdgekitError, match=r"recipe 'nope' not found.*digits"):
        load_recipe("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("prune: [unclosed\n")
    with pytest.raises(EdgekitError, match=r"not valid YAML at line"):
        load_recipe(str(bad))
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(EdgekitError, match=r"top level must be a mapping"):
        load_recipe(str(listy))

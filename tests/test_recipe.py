import os

import pytest

from edgekit.errors import EdgekitError
from edgekit.recipe import Recipe, check_inputs, default_out_dir, load_recipe, recipe_from_dict


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
    with pytest.raises(EdgekitError, match=r"teacher\.epochs must be a number \(int\)"):
        recipe_from_dict({"teacher": {"epochs": True}})


def test_a_teacher_that_trains_for_zero_epochs_is_refused_and_unset_epochs_pick_a_default():
    with pytest.raises(EdgekitError, match=r"^recipe: teacher\.epochs must be at least 1 when the teacher "
                                           r"trains \(0\)"):
        load_recipe("imagenet", ["teacher.train=true", "teacher.epochs=0"])
    with pytest.raises(EdgekitError, match=r"teacher\.epochs must be at least 1"):
        load_recipe("digits", ["teacher.epochs=0"])  # train unset: it trains, having no checkpoint
    assert load_recipe("imagenet", ["teacher.train=false", "teacher.epochs=0"]).teacher.epochs == 0
    teacher = load_recipe("imagenet").teacher
    assert teacher.train is None and teacher.epochs is None
    assert teacher.epochs_for(from_checkpoint=True) == 5 and teacher.epochs_for(from_checkpoint=False) == 10
    # unset train: a checkpoint is used as it is unless its head had to be replaced
    assert not teacher.trains(from_checkpoint=True, head_replaced=False)
    assert teacher.trains(from_checkpoint=True, head_replaced=True) and teacher.trains(False, False)
def test_a_yaml_boolean_where_a_number_belongs_says_how_yaml_read_it():
    with pytest.raises(EdgekitError, match=r"^recipe: distill\.alpha must be a number \(float\), but its value was "
                       r"read as the boolean true \(YAML reads yes/on/true as true .*\): give a number$"):
        load_recipe("digits", ["distill.alpha=yes"])
    with pytest.raises(EdgekitError, match=r"prune\.rounds must be a number \(int\), .* boolean false"):
        load_recipe("digits", ["prune.rounds=off"])


def test_a_users_data_is_named_after_its_folder_unless_name_is_set():
    assert load_recipe("imagenet", ["data.root=/data/flowers/"]).name == "flowers"
    assert load_recipe("imagenet", ["data.root=/data/My Flowers"]).name == "My-Flowers"  # safe as a file name
    assert load_recipe("imagenet", ["data.root=/data/flowers", "name=petals"]).name == "petals"
    assert load_recipe("digits").name == "digits" and Recipe().name == "digits"
    assert default_out_dir(load_recipe("imagenet", ["data.root=/d/cats"]), None) == os.path.join("artifacts", "cats")
    with pytest.raises(EdgekitError, match=r"name '\.\./x' must be letters, digits"):
        load_recipe("digits", ["name=../x"])


def test_a_missing_checkpoint_is_refused_before_any_work(tmp_path):
    check_inputs(load_recipe("digits"))  # no checkpoint: nothing to check
    missing = str(tmp_path / "resnet50.pth")
    with pytest.raises(EdgekitError, match=r"^model\.checkpoint .*resnet50\.pth does not exist: give the path"):
        check_inputs(load_recipe("imagenet", ["model.checkpoint=" + missing]))
    with pytest.raises(EdgekitError, match=r"is not a file"):
        check_inputs(load_recipe("imagenet", ["model.checkpoint=" + str(tmp_path)]))


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

"""The host stages' declarations: what each stage reads is in its key, so a changed value recomputes it."""

import pytest

from edgekit.host.pipeline import STAGES
from edgekit.host.steps import HostContext
from edgekit.recipe import load_recipe
from edgekit.stages import World, stage_key

LATENCY = ["prune.target=latency", "prune.target_latency_ratio=0.6"]
COMPRESS = next(s for s in STAGES if s.name == "compress")


def compress_key(tmp_path, overrides):
    recipe = load_recipe("digits", overrides)
    return stage_key(COMPRESS, HostContext(recipe, recipe.to_dict(), str(tmp_path), lambda line: None, World()))


@pytest.mark.parametrize("change", ["bench.threads=1", "threads=3"])
def test_with_a_latency_target_the_timing_threads_are_inputs_of_compress(tmp_path, change):
    assert compress_key(tmp_path, LATENCY) != compress_key(tmp_path, LATENCY + [change])
    # a MACs target times nothing: its spiral is reused whatever the threads
    assert compress_key(tmp_path, []) == compress_key(tmp_path, [change])


def test_every_stage_declares_sections_the_recipe_has(tmp_path):
    for overrides in ([], LATENCY):
        recipe = load_recipe("digits", overrides)
        ctx = HostContext(recipe, recipe.to_dict(), str(tmp_path), lambda line: None, World())
        for stage in STAGES:
            assert stage_key(stage, ctx)  # a declared path the recipe lacks raises KeyError


def test_the_data_loads_under_any_stage_that_declares_only_the_data_and_its_seed(tmp_path):
    """Whichever stage first needs the data loads it (a reused teacher leaves it to compress or measure)."""
    from edgekit.stages import Stage

    recipe = load_recipe("digits", ["data.image_size=16", "data.max_train_samples=64", "data.max_val_samples=32"])
    ctx = HostContext(recipe, recipe.to_dict(), str(tmp_path), lambda line: None, World())
    with ctx.seeing(Stage("uses-data", dict, sections=("data", "seed"))):
        assert len(ctx.data.val) == 32

"""The stage driver with toy stages: keys, reuse, force, force downstream, manifest, the writer hook."""

import json
import os

import pytest

from edgekit.errors import EdgekitError
from edgekit.stages import Context, Stage, UndeclaredRead, World, config_slice, downstream, run_stages


def _writer(name, text_of):
    """A stage that writes `<name>.txt` from the config and counts its computations."""
    def compute(ctx):
        ctx.calls.append(name)
        with open(os.path.join(ctx.out_dir, name + ".txt"), "w") as f:
            f.write(text_of(ctx))
        return {"wrote": name}
    return compute


def toy_stages(gate=lambda ctx: True):
    return (
        Stage("a", _writer("a", lambda ctx: str(ctx.config["x"])), sections=("x",), outputs=("a.txt",)),
        Stage("b", _writer("b", lambda ctx: "b"), needs=("a",), sections=("y.z",), outputs=("b.txt",)),
        Stage("c", _writer("c", lambda ctx: "c"), needs=("b",), enabled=gate, outputs=("c.txt",)),
        Stage("d", _writer("d", lambda ctx: "d"), needs=("a", "c"), outputs=lambda m: [m["wrote"] + ".txt"]),
        Stage("e", _writer("e", lambda ctx: "e")),  # needs nothing: never forced by the others
    )


def run(folder, config=None, stages=None, **kw):
    ctx = Context(None, config or {"x": 1, "y": {"z": 2, "other": 3}}, str(folder), lambda line: None, World())
    ctx.calls = []
    results = run_stages(stages or toy_stages(), ctx, **kw)
    return ctx.calls, results


def test_second_run_reuses_every_stage_and_the_manifest_says_what_ran(tmp_path):
    calls, first = run(tmp_path)
    assert calls == ["a", "b", "c", "d", "e"] and not any(r.reused for r in first.values())
    calls, again = run(tmp_path)
    assert calls == [] and all(r.reused for r in again.values())
    assert {n: r.key for n, r in again.items()} == {n: r.key for n, r in first.items()}
    assert again["b"].metrics == {"wrote": "b"}
    manifest = json.loads((tmp_path / "manifest.json").read_text())["stages"]
    assert sorted(manifest) == ["a", "b", "c", "d", "e"]
    assert set(manifest["d"]["outputs"]) == {"d.txt"} and len(manifest["d"]["outputs"]["d.txt"]) == 64
    assert manifest["a"]["key"] == first["a"].key and manifest["a"]["metrics"] == {"wrote": "a"}
    assert manifest["a"]["seconds"] >= 0 and manifest["a"]["finished"]


def test_a_stage_that_now_declares_another_output_recomputes(tmp_path):
    run(tmp_path)
    stages = list(toy_stages())
    write_a = _writer("a", lambda ctx: str(ctx.config["x"]))

    def write_both(ctx):  # a newer edgekit's stage writes a file the old run lacks
        (tmp_path / "a2.txt").write_text("new")
        return write_a(ctx)

    stages[0] = Stage("a", write_both, sections=("x",), outputs=("a.txt", "a2.txt"))
    calls, results = run(tmp_path, stages=stages)
    assert calls[0] == "a" and not results["a"].reused
    assert run(tmp_path, stages=stages)[0] == []  # and is reused from then on


def test_force_reruns_everything_and_force_stage_reruns_its_downstream_only(tmp_path):
    run(tmp_path)
    assert run(tmp_path, force=True)[0] == ["a", "b", "c", "d", "e"]
    calls, results = run(tmp_path, force_stages=["b"])
    assert calls == ["b", "c", "d"]
    assert [n for n, r in results.items() if r.reused] == ["a", "e"]
    assert run(tmp_path, force_stages=["c", "e"])[0] == ["c", "d", "e"]
    with pytest.raises(EdgekitError, match="unknown stage nope; stages are a, b, c, d, e"):
        run(tmp_path, force_stages=["nope"])


def test_a_config_slice_change_reruns_the_stage_and_what_its_outputs_feed(tmp_path):
    run(tmp_path)
    # y.other is read by no stage: nothing reruns
    assert run(tmp_path, config={"x": 1, "y": {"z": 2, "other": 4}})[0] == []
    # y.z is b's slice: b's key changes, and with it the key of every stage downstream
    assert run(tmp_path, config={"x": 1, "y": {"z": 5, "other": 3}})[0] == ["b", "c", "d"]
    # x changes a's output bytes: everything downstream of a reruns
    assert run(tmp_path, config={"x": 2, "y": {"z": 5, "other": 3}})[0] == ["a", "b", "c", "d"]


def test_downstream_keys_follow_the_bytes_upstream_stages_wrote(tmp_path):
    made = {"a": "first"}  # what a writes depends on more than its key (think: training on another machine)
    stages = (Stage("a", _writer("a", lambda ctx: made["a"]), outputs=("a.txt",)),) + toy_stages()[1:]
    run(tmp_path, stages=stages)
    (tmp_path / "a.txt").write_text("tampered")
    # a is stale and reruns; it writes the same bytes again, so nothing downstream has to
    assert run(tmp_path, stages=stages)[0] == ["a"]
    made["a"] = "second"
    (tmp_path / "a.txt").write_text("tampered")
    assert run(tmp_path, stages=stages)[0] == ["a", "b", "c", "d"]
    os.unlink(tmp_path / "d.txt")
    assert run(tmp_path, stages=stages)[0] == ["d"]


def test_a_disabled_stage_is_skipped_and_changes_the_keys_that_need_it(tmp_path):
    calls, results = run(tmp_path, stages=toy_stages(gate=lambda ctx: False))
    assert calls == ["a", "b", "d", "e"] and "c" not in results
    calls, results = run(tmp_path, stages=toy_stages())
    assert calls == ["c", "d"]


def test_on_force_runs_before_a_forced_recompute_only(tmp_path):
    seen = []
    stages = (Stage("a", _writer("a", lambda ctx: "a"), outputs=("a.txt",)),
              Stage("b", _writer("b", lambda ctx: "b"), needs=("a",), on_force=lambda ctx: seen.append("b")))
    run(tmp_path, stages=stages)
    assert seen == []
    run(tmp_path, stages=stages, force_stages=["a"])
    assert seen == ["b"]


class NotWriter(World):
    rank = 1

    def __init__(self):
        self.barriers = 0

    def barrier(self):
        self.barriers += 1

    def broadcast_object(self, value):
        assert value is None  # only the writer decides
        return False


def test_a_non_writer_rank_computes_only_collective_stages_and_reads_what_the_writer_recorded(tmp_path):
    run(tmp_path)  # the writer's earlier run: the manifest now holds every stage
    world = NotWriter()
    ctx = Context(None, {"x": 1, "y": {"z": 2}}, str(tmp_path), lambda line: None, world)
    ctx.calls = []
    stages = (Stage("a", _writer("a", lambda ctx: "1"), sections=("x",), outputs=("a.txt",), collective=True),
              Stage("b", _writer("b", lambda ctx: "b"), needs=("a",), sections=("y.z",), outputs=("b.txt",)))
    results = run_stages(stages, ctx)
    assert ctx.calls == ["a"] and world.barriers == 4
    assert results["b"].metrics == {"wrote": "b"}


def test_declarations_are_checked():
    with pytest.raises(ValueError, match="needs b, which is not declared before it"):
        run_stages((Stage("a", dict, needs=("b",)), Stage("b", dict)), Context(None, {}, ".", print, World()))
    with pytest.raises(KeyError, match="recipe section 'q.r'"):
        config_slice({"q": {}}, ["q.r"])
    assert downstream(toy_stages(), ["c"]) == {"c", "d"}


class Config(object):
    """A recipe-like object: attributes, sub-objects, to_dict."""

    def __init__(self, **values):
        self.__dict__.update(values)

    def to_dict(self):
        return {k: v.to_dict() if isinstance(v, Config) else v for k, v in self.__dict__.items()}


def _reading(*paths):
    def compute(ctx):
        for path in paths:
            value = ctx.recipe
            for part in path.split("."):
                value = getattr(value, part)
        return {"read": list(paths)}
    return compute


def test_a_stage_reads_only_what_it_declared(tmp_path):
    recipe = Config(bench=Config(threads=2, seconds=1.0), threads=None, seed=0)
    config = recipe.to_dict()

    def run_one(stage):
        ctx = Context(recipe, config, str(tmp_path), lambda line: None, World())
        return run_stages((stage,), ctx, force=True)[stage.name].metrics

    assert run_one(Stage("a", _reading("bench.threads", "seed"), sections=("bench.threads", "seed")))
    with pytest.raises(UndeclaredRead, match=r"stage b reads recipe bench\.seconds but declares only bench\.threads"):
        run_one(Stage("b", _reading("bench.seconds"), sections=("bench.threads",)))
    with pytest.raises(UndeclaredRead, match=r"stage c reads recipe threads"):
        run_one(Stage("c", _reading("threads"), sections=("bench",)))
    # the config dict, the extra and the enabled hook see the same view
    with pytest.raises(UndeclaredRead, match=r"stage d reads recipe seed"):
        run_one(Stage("d", lambda ctx: {"seed": ctx.config["seed"]}, sections=("bench",)))
    with pytest.raises(UndeclaredRead, match=r"stage e reads recipe threads"):
        run_one(Stage("e", dict, sections=("bench",), extra=lambda ctx: ctx.recipe.threads))
    with pytest.raises(UndeclaredRead, match=r"stage f reads recipe seed"):
        run_one(Stage("f", dict, enabled=lambda ctx: ctx.recipe.seed == 0))
    # to_dict hands out the declared part only
    assert run_one(Stage("g", lambda ctx: ctx.recipe.to_dict(), sections=("bench.threads",))) == {
        "bench": {"threads": 2}}


def test_reads_are_readable_but_not_in_the_key_and_sections_may_follow_the_config(tmp_path):
    def stages():
        return (Stage("a", _writer("a", lambda ctx: str(ctx.config["x"]) + str(ctx.config["how"])),
                      sections=lambda config: ("x", "y.z") if config["x"] > 1 else ("x",), reads=("how",),
                      outputs=("a.txt",)),)

    base = {"x": 1, "y": {"z": 2}, "how": "fast"}
    assert run(tmp_path, config=base, stages=stages())[0] == ["a"]
    # `how` is read, not keyed: changing it reuses; y.z is no input while x is 1
    assert run(tmp_path, config=dict(base, how="slow"), stages=stages())[0] == []
    assert run(tmp_path, config=dict(base, y={"z": 3}), stages=stages())[0] == []
    assert run(tmp_path, config=dict(base, x=2), stages=stages())[0] == ["a"]
    assert run(tmp_path, config=dict(base, x=2, y={"z": 3}), stages=stages())[0] == ["a"]

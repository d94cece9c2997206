"""Latency-targeted pruning: the knapsack, the staircase, the table's cache key, groups, floors, errors."""

import itertools

import numpy as np
import pytest

from edgekit.device.latency.allocate import Step, allocate, knapsack, staircase
from edgekit.device.latency.layers import dense_groups, layer_kinds, layers, resnet_onnx, spec_of
from edgekit.device.latency.table import TABLE_FORMAT, LatencyTable, _dense_width, grid_widths, key_hash, table_key
from edgekit.errors import EdgekitError


def synthetic_table(image_size=224, points=8, bump=None):
    """ms proportional to MACs (a CPU-like table); `bump(kind, cin, cout)` adds a staircase."""
    kinds = {}
    for kind in layer_kinds(image_size):
        gin = [3] if kind.cin_group is None else grid_widths(_dense_width(kind, kind.cin_group), points)
        gout = grid_widths(_dense_width(kind, kind.cout_group), points)
        ms = [[1e-7 * cin * cout * kind.kernel ** 2 * kind.out_hw ** 2 + (bump(kind, cin, cout) if bump else 0.0)
               for cout in gout] for cin in gin]
        kinds[kind.name] = {"cin": gin, "cout": gout, "ms": ms}
    key = table_key("onnxruntime-cpu", "test", "onnxruntime 0", image_size, 1, "fp32", points)
    return LatencyTable({"format": TABLE_FORMAT, "key": key, "kinds": kinds, "scale": 1.0})


def brute_force(options, need):
    best = None
    for combo in itertools.product(*options.values()):
        if sum(s.saving for s in combo) >= need - 1e-12:
            lost = sum(s.lost for s in combo)
            if best is None or lost < best[0] - 1e-12:
                best = (lost, {g: s.width for g, s in zip(options, combo)})
    return best


def test_knapsack_matches_brute_force_on_a_hand_made_table():
    options = {
        "a": [Step(64, 0.0, 0.0), Step(48, 1.0, 3.0), Step(32, 2.5, 5.0), Step(16, 6.0, 6.0)],
        "b": [Step(128, 0.0, 0.0), Step(96, 0.5, 1.0), Step(64, 1.6, 4.0)],
        "c": [Step(32, 0.0, 0.0), Step(24, 0.2, 0.5), Step(16, 3.0, 2.5), Step(8, 9.0, 3.0)],
    }
    for need in (0.5, 1.0, 3.0, 4.5, 6.0, 7.5, 9.0, 11.0, 13.0):
        got = knapsack(options, need)
        want = brute_force(options, need)
        assert got is not None and want is not None
        chosen = [next(s for s in options[g] if s.width == w) for g, w in got.items()]
        assert sum(s.saving for s in chosen) >= need * (1 - len(options) / 2000.0)
        assert sum(s.lost for s in chosen) == pytest.approx(want[0]), need
    assert knapsack(options, 15.0) is None  # more than everything at its smallest saves


def test_knapsack_beats_greedy():
    # Greedy by importance lost per ms saved takes a's cheap small steps first, then must add b's
    # big one anyway; the knapsack takes b's big step alone.
    options = {"a": [Step(64, 0.0, 0.0), Step(56, 0.1, 1.0), Step(48, 1.5, 2.0)],
               "b": [Step(64, 0.0, 0.0), Step(32, 1.0, 3.0)]}
    assert knapsack(options, 3.0) == {"a": 64, "b": 32}


def test_staircase_drops_widths_no_faster_than_wider_ones():
    # The H200 table of issue 13: 112 channels run slower than 128, 208 slower than ... etc.
    cost = {96: 36.9, 112: 52.0, 128: 48.5, 144: 76.7, 192: 80.4, 208: 111.4}
    assert staircase(list(cost), cost) == [96, 128, 144, 192, 208]


def test_cache_key_changes_with_backend_shape_runtime_and_precision():
    base = table_key("onnxruntime-cpu", "cpu0", "onnxruntime 1.20", 224, 1, "fp32", 8)
    seen = {key_hash(base)}
    for change in ({"backend": "tensorrt"}, {"image_size": 160}, {"runtime": "onnxruntime 1.21"},
                   {"batch": 64}, {"precision": "fp16"}, {"device": "Xavier"}, {"points": 4}):
        changed = dict(base, **change)
        seen.add(key_hash(changed))
    assert len(seen) == 8
    assert key_hash(dict(base)) == key_hash(base)


def test_allocation_meets_the_budget_on_measured_steps_with_the_floor():
    table = synthetic_table()
    dense = dense_groups()
    rng = np.random.default_rng(0)
    scores = {g: rng.random(w) for g, w in dense.items()}
    budget = 0.5 * table.predict_ms(dense)
    widths, predicted = allocate(table, dense, scores, budget, min_channels=32)
    assert predicted <= budget
    assert predicted >= 0.9 * budget  # not needlessly far below: the knapsack spends the budget
    assert table.predict_ms(widths) == pytest.approx(predicted)
    for g, w in widths.items():
        assert w in table.widths(g) and w >= 32 and w <= dense[g], (g, w)


def test_allocation_lands_on_the_staircase_step():
    # A GPU-like table where 448 (7/8 of 512) output channels of layer4's conv1 cost more than 512.
    def bump(kind, cin, cout):
        return 5.0 if kind.name.startswith("layer4.") and kind.name.endswith("conv1") and cout == 448 else 0.0

    table = synthetic_table(bump=bump)
    dense = dense_groups()
    scores = {g: np.ones(w) for g, w in dense.items()}
    widths, _ = allocate(table, dense, scores, 0.7 * table.predict_ms(dense), min_channels=8)
    assert all(widths["layer4.{}.conv1".format(b)] != 448 for b in range(3))


def test_budget_below_the_floor_names_the_floor():
    table = synthetic_table()
    dense = dense_groups()
    scores = {g: np.ones(w) for g, w in dense.items()}
    floor = table.predict_ms({g: max(32, table.widths(g)[0]) for g in dense})
    with pytest.raises(EdgekitError, match=r"below the latency table's floor of {:.3f} ms".format(floor)):
        allocate(table, dense, scores, 0.5 * floor, min_channels=32)


def test_layers_cover_resnet50():
    groups = dense_groups()
    assert len(layers(groups, 224)) == 53
    assert spec_of(groups)["stages"][3]["out"] == 2048


def test_onnx_builders_run_in_onnxruntime():
    ort = pytest.importorskip("onnxruntime")
    from edgekit.device.latency.backends import feeds_for
    from edgekit.device.runtime.registry import latency_backend

    small = {g: max(8, w // 8) for g, w in dense_groups().items()}
    model = resnet_onnx(small, 32, 2, num_classes=10)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, feeds_for(model))
    assert logits.shape == (2, 10)
    backend = latency_backend("onnxruntime-cpu", threads=1, min_runs=3, min_seconds=0.0)
    assert backend.time_model(model, feeds_for(model)) > 0


def test_unknown_backend_and_precision_are_one_line_errors():
    from edgekit.device.runtime.registry import latency_backend

    with pytest.raises(EdgekitError, match="unknown latency backend 'nope'"):
        latency_backend("nope")
    with pytest.raises(EdgekitError, match="times fp32 only"):
        latency_backend("onnxruntime-cpu", precision="fp16")


def test_recipe_latency_fields_are_validated():
    from edgekit.recipe import recipe_from_dict

    with pytest.raises(EdgekitError, match="exactly one of prune.target_latency_ratio"):
        recipe_from_dict({"prune": {"target": "latency"}})
    with pytest.raises(EdgekitError, match="target_latency_ratio must be in"):
        recipe_from_dict({"prune": {"target": "latency", "target_latency_ratio": 1.5}})
    r = recipe_from_dict({"prune": {"target": "latency", "target_latency_ratio": 0.5}})
    assert (r.prune.latency_backend, r.prune.latency_image_size, r.prune.latency_batch,
            r.prune.latency_precision) == ("onnxruntime-cpu", 224, 1, "fp32")


def test_every_registered_importance_can_be_made():
    from edgekit.host.compress.prune import IMPORTANCES, make_importance

    for name in IMPORTANCES:
        assert callable(make_importance(name))
    with pytest.raises(EdgekitError, match="unknown structured pruning method"):
        make_importance("nope")


def test_pruned_groups_stay_residual_consistent():
    torch = pytest.importorskip("torch")
    from edgekit.host.arch.resnet import stage_spec
    from edgekit.host.compress.latency import importances, prune_to_groups
    from edgekit.host.models import resnet50

    model = resnet50(num_classes=10).eval()
    widths = dense_groups()
    widths.update({"stem": 32, "layer1.out": 128, "layer2.out": 320, "layer3.1.conv2": 96, "layer4.2.conv1": 256})
    scores = importances(model, "l1")
    pruned = prune_to_groups(model, widths, scores)
    spec = stage_spec(pruned)  # raises if a residual addition were left mismatched
    assert spec == spec_of(widths)
    with torch.no_grad():
        assert pruned(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    # the least important stem channels went: the kept ones are the top scores
    kept = pruned.conv1.weight.detach().abs().sum(dim=(1, 2, 3))
    assert kept.shape[0] == 32


@pytest.mark.slow
def test_rounding_error_names_the_rounding():
    pytest.importorskip("torch_pruning")
    from edgekit.host.arch.resnet import RESNET50
    from edgekit.host.compress.prune import prune
    from edgekit.host.models import count_macs_params, resnet50

    model = resnet50(num_classes=10).eval()
    macs, _ = count_macs_params(model, 32)
    with pytest.raises(EdgekitError, match="rounded to multiples of 64"):
        prune(model, int(0.5 * macs), 32, RESNET50, allocation="uniform", round_to=64, log=lambda _m: None)


@pytest.mark.slow
def test_table_is_built_once_then_reused_and_calibrated(tmp_path):
    pytest.importorskip("onnxruntime")
    from edgekit.device.latency.table import load_or_build
    from edgekit.device.runtime.registry import latency_backend

    backend = latency_backend("onnxruntime-cpu", threads=1, min_runs=2, min_seconds=0.0, warmup=1)
    lines = []
    table, path = load_or_build(backend, 32, 1, points=2, folder=str(tmp_path), log=lines.append)
    # The fit keeps the layer sum, the weight term or both (on a tiny, noisy table either may drop out),
    # and what it keeps predicts every validated network as a positive time.
    assert table.key["image_size"] == 32 and table.scale >= 0 and table.weight_ms >= 0
    assert table.scale + table.weight_ms > 0
    assert all(row["predicted_ms"] > 0 for row in table.data["validation"])
    assert len(table.data["validation"]) >= 5 and table.data["mean_abs_error"] is not None
    again, same = load_or_build(backend, 32, 1, points=2, folder=str(tmp_path), log=lines.append)
    assert same == path and "reusing" in lines[-1]
    other, other_path = load_or_build(backend, 64, 1, points=2, folder=str(tmp_path), log=lines.append)
    assert other_path != path


@pytest.mark.gpu
def test_torch_cuda_backend_times_a_layer():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU here")
    from edgekit.device.runtime.registry import latency_backend

    backend = latency_backend("torch-cuda", precision="fp16")
    kind = layer_kinds(224)[2]
    assert 0 < backend.time_layer(kind, 64, 64, 64) < 100


def test_refit_finds_one_scale_or_the_weight_term():
    from edgekit.device.latency.table import refit

    table = synthetic_table()
    raw = [30.0, 20.0, 10.0, 5.0, 12.0]
    mp = [23.0, 10.0, 8.0, 2.0, 3.0]
    rows = [{"spec": str(i), "measured_ms": 2.0 * r, "layer_sum_ms": r, "mparams": p}
            for i, (r, p) in enumerate(zip(raw, mp))]
    refit(table, rows, log=lambda _m: None)
    assert table.scale == pytest.approx(2.0, rel=1e-3) and table.weight_ms == pytest.approx(0.0, abs=1e-3)
    assert table.data["max_abs_error"] < 1e-3
    rows = [dict(r, measured_ms=3.0 * r["mparams"]) for r in rows]  # memory-bound: latency follows weights
    refit(table, rows, log=lambda _m: None)
    assert table.weight_ms == pytest.approx(3.0, rel=1e-3) and table.data["max_abs_error"] < 1e-3


@pytest.mark.slow
def test_the_pipeline_prunes_to_a_latency_budget_and_records_every_round(tmp_path):
    """The whole wiring: a table measured by `edgekit latency-table`, given to a run as prune.latency_table,
    and every spiral round timed beside the dense model, its trials and its measured ratio in summary.json."""
    import subprocess

    from conftest import TINY, edgekit_cmd

    from edgekit.host.pipeline import run
    from edgekit.recipe import load_recipe

    table = str(tmp_path / "table.json")
    made = subprocess.run(edgekit_cmd("latency-table", "--image-size", "32", "--points", "2", "--threads", "1",
                                      "--cache-dir", str(tmp_path / "cache"), "--out", table),
                          capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr
    overrides = TINY + ["prune.target=latency", "prune.target_latency_ratio=0.7", "prune.latency_image_size=32",
                        "prune.latency_table=" + table, "compare.enabled=false"]
    lines = []
    summary = run(load_recipe("digits", overrides), str(tmp_path / "out"), log=lines.append)
    rounds = summary["rounds"]
    # Each attempt says which of how many it is and what budget it tries, and the run ends with the
    # latency reached beside the MACs.
    attempts = [line for line in lines if line.startswith("  latency attempt ")]
    assert attempts[0].startswith("  latency attempt 1/6: budget ") and "from the table alone" in attempts[0]
    assert any(": predicted " in line and ("within 5%" in line or "off, " in line) for line in attempts)
    student = next(line for line in lines if line.startswith("student: "))
    assert "latency {:.1%} of dense (target 70%, onnxruntime-cpu)".format(summary["student"]["latency_ratio"]) \
        in student and summary["student"]["latency_ratio"] == rounds[-1]["latency_ratio"]
    assert [r["round"] for r in rounds] == [1, 2]
    assert rounds[-1]["target_latency_ratio"] == pytest.approx(0.7)
    for r in rounds:
        assert r["latency_backend"] == "onnxruntime-cpu" and r["dense_latency_ms"] > 0 and r["latency_ms"] > 0
        assert r["latency_ratio"] == pytest.approx(r["latency_ms"] / r["dense_latency_ms"], rel=1e-3)
        trials = r["latency_trials"]
        assert trials and r["latency_ratio"] in [round(t["measured_ratio"], 5) for t in trials]
        # the round keeps its trial closest to its target
        closest = min(trials, key=lambda t: abs(t["measured_ratio"] / r["target_latency_ratio"] - 1))
        assert r["latency_ratio"] == pytest.approx(closest["measured_ratio"], abs=1e-5)
    assert summary["student"]["macs_ratio"] < 1.0
    # The spiral timed its students with the recipe's threads: the driver, reading the manifest this run
    # wrote, reuses compress as it is and recomputes it under other bench.threads.
    assert not _compress_reruns(overrides, str(tmp_path / "out"))
    assert _compress_reruns(overrides + ["bench.threads=1"], str(tmp_path / "out"))


class _Recomputed(Exception):
    pass


def _compress_reruns(overrides, out):
    from edgekit.host.pipeline import STAGES
    from edgekit.host.steps import HostContext
    from edgekit.recipe import load_recipe
    from edgekit.stages import World, run_stages

    def stop(ctx):  # instead of a second spiral: the driver's decision is what is tested
        raise _Recomputed

    recipe = load_recipe("digits", overrides)
    teacher, compress = STAGES[:2]
    try:
        run_stages((teacher, compress._replace(compute=stop)), HostContext(recipe, recipe.to_dict(), out,
                                                                             lambda m: None, World()))
    except _Recomputed:
        return True
    return False

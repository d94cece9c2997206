"""Which reading is the board's total power, on fake sysfs trees laid out as JetPack 5/6's INA3221 hwmon
nodes of an AGX Xavier, an Orin NX, an AGX Orin (both of its INA3221 chips) and a Nano."""

import os

import pytest
from test_power import XAVIER_RAILS, write

from edgekit.device.bench.power import (
    Ina3221Hwmon,
    PowerTrace,
    PowerUnavailable,
    summarize_power,
    total_rule,
)

# (label, mV, mA) per INA3221 chip. Orin NX/Nano-class boards and the Nano carry an input rail that
# already measures the whole board; the AGX Xavier's six rails have none and add up to the board.
ORIN_RAILS = {"1-0040": [("VDD_IN", 19000, 700), ("VDD_CPU_GPU_CV", 19000, 200), ("VDD_SOC", 19000, 150)]}
# The AGX Orin has no input rail: its GPU/SOC, CPU/CV and system 5 V supplies are separate and add up; the
# second INA3221's DDR rail VDDQ_VDD2_1V8AO is fed from VIN_SYS_5V0 (L4T r36 developer guide), so it is not added.
AGX_ORIN_RAILS = {"1-0040": [("VDD_GPU_SOC", 19000, 300), ("VDD_CPU_CV", 19000, 200), ("VIN_SYS_5V0", 5000, 600)],
                  "1-0041": [("VDDQ_VDD2_1V8AO", 5000, 220)]}
NANO_RAILS = {"6-0040": [("POM_5V_IN", 5000, 1200), ("POM_5V_GPU", 5000, 300), ("POM_5V_CPU", 5000, 400)]}


def hwmon_tree(root, chips):
    for n, (chip, rails) in enumerate(sorted(chips.items())):
        hwmon = os.path.join(root, "sys/bus/i2c/drivers/ina3221", chip, "hwmon", "hwmon{}".format(1 + n))
        for k, (label, mv, ma) in enumerate(rails, start=1):
            write(os.path.join(hwmon, "in{}_label".format(k)), label)
            write(os.path.join(hwmon, "in{}_input".format(k)), str(mv))
            write(os.path.join(hwmon, "curr{}_input".format(k)), str(ma))


def measured_total(root, requested=None):
    source = Ina3221Hwmon(str(root))
    rule, why = total_rule(source.rails(), requested)
    trace = PowerTrace(source.name, source.rails())
    trace.times, trace.samples = [0.0, 1.0], [source.read(), source.read()]
    return summarize_power(trace, inferences=10, seconds=1.0, total_rule=rule), why


@pytest.mark.parametrize("board, chips, rule, watts", [
    ("agx-xavier", XAVIER_RAILS, "sum", sum(mv * ma for r in XAVIER_RAILS.values() for _, mv, ma in r) / 1e6),
    ("orin-nx", ORIN_RAILS, "VDD_IN", 19.0 * 0.7),
    ("agx-orin", AGX_ORIN_RAILS, "VDD_GPU_SOC+VDD_CPU_CV+VIN_SYS_5V0", 19.0 * 0.5 + 5.0 * 0.6),
    ("nano", NANO_RAILS, "POM_5V_IN", 6.0),
])
def test_the_board_total_is_the_input_rail_or_the_sum(tmp_path, board, chips, rule, watts):
    hwmon_tree(str(tmp_path), chips)
    power, why = measured_total(tmp_path)
    assert power["total_rule"] == rule and why.startswith("auto")
    assert power["total_w"] == pytest.approx(watts, abs=1e-3)  # summing Orin NX's rails would say 25.65 W
    assert power["mj_per_inference"] == pytest.approx(watts * 100, abs=0.1)
    given, why = measured_total(tmp_path, rule)
    assert given["total_w"] == power["total_w"] and why.startswith("given")


def test_a_named_total_rail_the_board_lacks_is_refused(tmp_path):
    hwmon_tree(str(tmp_path), XAVIER_RAILS)
    with pytest.raises(PowerUnavailable, match="VDD_IN is not on this board"):
        measured_total(tmp_path, "VDD_IN")
    assert total_rule(["VDD_IN", "VDD_SOC"], "sum")[0] == "sum"
    assert total_rule(["vdd_in", "VDD_SOC"], "VDD_IN")[0] == "vdd_in"


def test_agx_orins_total_is_the_rails_its_target_names(tmp_path):
    """DDR (VDDQ_VDD2_1V8AO, 1.1 W here) is inside VIN_SYS_5V0: adding all four rails says 13.6 W, 8.8% high."""
    from edgekit.targets import load_target

    hwmon_tree(str(tmp_path), AGX_ORIN_RAILS)
    target = load_target("orin")
    assert target.power_total_rule() == "VDD_GPU_SOC+VDD_CPU_CV+VIN_SYS_5V0"
    power, why = measured_total(tmp_path, target.power_total_rule())
    assert power["total_w"] == pytest.approx(12.5, abs=1e-3) and sorted(power["rails_w"]) == sorted(
        ["VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0", "VDDQ_VDD2_1V8AO"])  # every rail is still recorded
    assert why == "given: VDD_GPU_SOC, VDD_CPU_CV, VIN_SYS_5V0 add up to the board (VDDQ_VDD2_1V8AO not added)"
    assert load_target("xavier").power_total_rule() == "GPU+CPU+SOC+CV+VDDRQ+SYS5V"
    with pytest.raises(PowerUnavailable, match="VIN_SYS_5V0 is not on this board"):
        total_rule(["VDD_GPU_SOC", "VDD_CPU_CV"], target.power_total_rule())

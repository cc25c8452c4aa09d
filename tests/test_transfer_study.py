"""benchmarks/transfer_study.py's convergence table: steps to the reference's final shifted accuracy, by hand."""

import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location("transfer_study", Path(__file__).parents[1] / "benchmarks" / "transfer_study.py")
transfer_study = importlib.util.module_from_spec(spec)
spec.loader.exec_module(transfer_study)


def run(final: float, curve: list[tuple[int, float]]) -> dict:
    return {"val_shifted_acc": final, "curve": [list(point) for point in curve]}


def test_each_variant_is_measured_against_its_own_reference() -> None:
    curve = [(10, 20.0), (20, 40.0), (30, 60.0), (40, 70.0)]
    results = {
        "kd": {"0": run(30.0, [(10, 25.0), (20, 30.0), (30, 30.0), (40, 30.0)])},
        "kd-wide": {"0": run(55.0, [(20, 40.0), (40, 50.0), (60, 55.0), (80, 55.0)])},
        "hard": {"0": run(70.0, curve)},
        "hard-wide": {"0": run(70.0, curve)},
        "never": {"0": run(10.0, [(10, 5.0), (40, 10.0)])},
    }
    variants = {"kd": {}, "kd-wide": {}, "hard": {}, "hard-wide": {"reference": "kd-wide"}, "never": {}}
    rows = transfer_study.convergence(results, variants, [0]).splitlines()
    # hard reaches kd's 30 % at step 20 of kd's 40; hard-wide reaches kd-wide's 55 % at step 30 of kd-wide's 80
    assert "| hard | kd | 50.0 | 1/1 |" in rows
    assert "| hard-wide | kd-wide | 37.5 | 1/1 |" in rows
    assert "| kd-wide | kd | 50.0 | 1/1 |" in rows  # its first epoch-end at or above 30 %: step 20 of 40
    assert "| never | kd | - | 0/1 |" in rows
    assert not any(row.startswith("| kd |") for row in rows)

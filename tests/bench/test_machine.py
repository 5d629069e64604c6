"""sao_kernels.bench.machine: metadata, load average, the busy-core contention helper."""

import os
import time

import pytest

from sao_kernels.bench.machine import (
    busy_core,
    busy_load_note,
    cross_core_note,
    cross_core_probe,
    machine_label,
    machine_meta,
    recording_load,
    results_stem,
    usable_cores,
)


def test_machine_meta_in_one_place():
    meta = machine_meta("cpu")
    for key in (
        "device",
        "cpu",
        "gpu",
        "cpu_count",
        "usable_cores",
        "threads",
        "torch",
        "triton",
        "sao_kernels",
        "native_build",
        "python",
        "date",
    ):
        assert key in meta
    assert meta["device"] == "cpu" and meta["gpu"] is None and meta["threads"] >= 1
    with recording_load(meta):
        pass
    assert len(meta["load_before"]) == 3 and len(meta["load_after"]) == 3
    assert "cross_core_before" in meta and "cross_core_after" in meta


def test_cross_core_probe(monkeypatch):
    import sao_kernels.bench.machine as machine

    if len(usable_cores()) >= 2:
        p = cross_core_probe(mib=1, rounds=3)
        assert p["cores"] == usable_cores()[:2] and p["mib"] == 1
        assert p["shared_ms"] > 0 and p["private_ms"] > 0
        assert p["ratio"] == round(p["shared_ms"] / p["private_ms"], 2)
    monkeypatch.setattr(machine, "usable_cores", lambda: [0])
    assert cross_core_probe() is None  # one core: nothing to probe


def test_cross_core_note():
    def probe(ratio):
        return {"cores": [0, 1], "mib": 4, "shared_ms": ratio * 0.2, "private_ms": 0.2, "ratio": ratio}

    assert cross_core_note({}) is None
    assert cross_core_note({"cross_core_before": probe(1.4), "cross_core_after": probe(1.6)}) is None
    note = cross_core_note({"cross_core_before": probe(1.4), "cross_core_after": probe(4.6)})
    assert "1.4 / 4.6x" in note
    assert "n/a / 3.0x" in cross_core_note({"cross_core_before": None, "cross_core_after": probe(3.0)})


def test_machine_label_and_stem():
    assert machine_label({"cpu": "Intel(R) Xeon(R) Processor @ 2.20GHz", "usable_cores": 2}) == "intel-xeon-2c"
    assert machine_label({"cpu": "AMD EPYC 7B13 64-Core Processor", "usable_cores": 2}) == "amd-epyc-7b13-2c"
    assert machine_label({"gpu": "NVIDIA H100 80GB HBM3", "cpu": "x"}) == "nvidia-h100-80gb-hbm3"
    assert (
        results_stem("small_width", {"machine": "m1", "date": "2026-12-01T10:00:00+00:00"})
        == "small_width_m1_2026-12-01"
    )


def test_busy_load_note():
    assert busy_load_note({"usable_cores": 2, "load_before": [3.5, 1, 1], "load_after": [0.1, 1, 1]})
    assert busy_load_note({"usable_cores": 2, "load_before": [0.2, 1, 1], "load_after": [0.3, 1, 1]}) is None
    assert busy_load_note({"usable_cores": 2, "load_before": [3.5, 1, 1], "contention": {"core": 1}}) is None
    # the run's own threads raise the load after it: not a sign of other processes
    assert (
        busy_load_note({"usable_cores": 2, "threads": 2, "load_before": [0.4, 1, 1], "load_after": [2.3, 1, 1]}) is None
    )
    assert busy_load_note({"usable_cores": 2, "threads": 2, "load_before": [0.4, 1, 1], "load_after": [3.5, 1, 1]})


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="needs Linux CPU affinity")
def test_busy_core_pins_a_spinning_process_and_kills_it():
    core = usable_cores()[-1]
    with busy_core() as info:
        assert info["core"] == core
        assert os.sched_getaffinity(info["pid"]) == {core}
        with open(f"/proc/{info['pid']}/stat") as f:
            t0 = sum(int(v) for v in f.read().split()[13:15])
        time.sleep(0.3)
        with open(f"/proc/{info['pid']}/stat") as f:
            t1 = sum(int(v) for v in f.read().split()[13:15])
        assert t1 > t0  # it is burning CPU time
    assert not os.path.exists(f"/proc/{info['pid']}")  # killed and reaped
    with pytest.raises(ValueError, match="not usable"):
        with busy_core(10_000):
            pass

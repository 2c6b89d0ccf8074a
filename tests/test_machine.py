"""Machine facts stored with measurements."""

from __future__ import annotations

import datetime
import os

import torch

from synth_transforms.machine import cpu_model, device_name, machine_facts


def test_device_name_names_the_cpu_without_cuda():
    assert device_name("cpu") == f"CPU: {cpu_model()}, {os.cpu_count()} cores"
    if not torch.cuda.is_available():
        assert device_name("cuda") == device_name("cpu")


def test_machine_facts_hold_versions_and_a_utc_date():
    facts = machine_facts()
    assert facts["torch"] == torch.__version__ and facts["cores"] == os.cpu_count()
    assert datetime.datetime.fromisoformat(facts["date"]).utcoffset() == datetime.timedelta(0)
    assert facts["cpu"] and facts["cpu"] != "unknown" or not os.path.exists("/proc/cpuinfo")

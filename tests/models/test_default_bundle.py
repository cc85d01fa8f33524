"""The shipped bundle loads with this code and carries its held-out evaluation."""

import json

from skygrade.models.bundle import DEFAULT_BUNDLE, load_bundle


def test_default_bundle_loads_and_records_held_out_metrics():
    bundle = load_bundle(DEFAULT_BUNDLE)
    m = bundle.manifest
    assert m["training"]["split"]["by"] == "night"
    test_ids = set(m["training"]["split"]["test"])
    assert test_ids and not test_ids & set(m["training"]["split"]["train"])
    exposure = m["metrics"]["full"]["exposure"]
    assert exposure["n"] >= 50 and exposure["accuracy"] > 0.8
    assert sum(p.stat().st_size for p in DEFAULT_BUNDLE.iterdir()) < 20 * 2**20
    json.dumps(m)  # the manifest is plain JSON

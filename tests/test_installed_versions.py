"""Library versions in keys are what the installed metadata says, however it is read."""

from __future__ import annotations

import importlib.metadata

from evsys_rules.plugins import installed


def test_the_version_header_is_what_importlib_metadata_reports_for_every_installed_distribution():
    dists = list(importlib.metadata.distributions())
    assert len(dists) > 50
    for dist in dists:
        assert installed.header_version(dist) == dist.version, dist.metadata["Name"]


def test_a_version_line_in_the_description_is_not_the_version(tmp_path):
    info = tmp_path / "evsys_fakelib.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: evsys_fakelib\n\nVersion: 0.0 (in the long description)\n")
    dist = importlib.metadata.PathDistribution(info)
    assert installed.header_version(dist) == dist.version
    assert dist.version is None

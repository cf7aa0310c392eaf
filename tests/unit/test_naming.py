"""Kernel names -> D-Bus object path elements."""

from __future__ import annotations

import re

import pytest

from rprocd import naming


@pytest.mark.parametrize(
    ("name", "element"),
    [
        ("m4", "m4"),
        ("M33", "M33"),
        ("dsp.0", "dsp_2e0"),
        ("a_b", "a_5fb"),
        ("core 1", "core_201"),
        ("", "_"),
        ("µ", "_c2_b5"),
        ("0", "0"),
    ],
)
def test_escape(name: str, element: str) -> None:
    assert naming.escape(name) == element
    assert re.fullmatch(r"[A-Za-z0-9_]+", element)


@pytest.mark.parametrize("name", ["m4", "dsp.0", "a_b", "", "µ-core/1", "_2e"])
def test_unescape_inverts_escape(name: str) -> None:
    assert naming.unescape(naming.escape(name)) == name


def test_collision_appends_the_device() -> None:
    assert naming.object_name("m4", "remoteproc1", set()) == "m4"
    assert naming.object_name("m4", "remoteproc1", {"m4"}) == "m4_remoteproc1"
    assert naming.object_name("dsp.0", "remoteproc2", {"dsp_2e0"}) == "dsp_2e0_remoteproc2"

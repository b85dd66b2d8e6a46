"""Fixtures of the network tests."""

from __future__ import annotations

import pytest
from netlab import end_lab, make_lab


@pytest.fixture(scope="module")
def appliance_lab(request, tmp_path_factory, appliance_image):
    """A lab (tests/netlab.py) of the module's own, its datastore allowed the appliance image, with network ``A``
    on the module's ``SUBNET`` (each module its own, so no two ever share addresses); removed after the module,
    pass or fail."""
    lab = make_lab(tmp_path_factory.mktemp(request.module.__name__.rpartition(".")[2]) / "datastore")
    try:
        lab.mv("datastore", "allow-path", str(appliance_image.parent))
        lab.mv("net", "create", "A", "--subnet", request.module.SUBNET)
        yield lab
    finally:
        end_lab(lab)

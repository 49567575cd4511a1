from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests_mock
from fakeregions import Regions


@pytest.fixture
def regions() -> Iterator[Regions]:
    with requests_mock.Mocker() as mocker:
        yield Regions(mocker)


@pytest.fixture
def shared() -> Iterator[Regions]:
    with requests_mock.Mocker() as mocker:
        yield Regions(mocker, shared_glance=True)

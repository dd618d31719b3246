import pytest

from .samples import Sample, make_sample


@pytest.fixture
def sample() -> Sample:
    return make_sample()

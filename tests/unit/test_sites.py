"""Site names: the one pattern, checked in one place."""

from __future__ import annotations

import pytest

from heartml.data.download import ALL_SITES
from heartml.data.sites import SiteNameError, check_site
from heartml.errors import UserError


@pytest.mark.parametrize("name", [*ALL_SITES, "st_marys_2", "a", "x" * 32])
def test_well_formed_names_pass(name: str) -> None:
    assert check_site(name) == name


@pytest.mark.parametrize("name", ["", "VA", "va-long-beach", "va beach", "va\n", "x" * 33, "é"])
def test_malformed_names_are_one_line_user_errors(name: str) -> None:
    with pytest.raises(SiteNameError) as raised:
        check_site(name)
    assert isinstance(raised.value, UserError)
    assert "\n" not in str(raised.value)
    assert "[a-z0-9_]" in str(raised.value)

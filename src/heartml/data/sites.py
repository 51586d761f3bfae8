"""Site names: the one pattern a site's name must match, checked in one place.

A site names the hospital a model is adapted for and served at (``heartml adapt --site``, the
alias ``champion-<site>``, the ``site`` of a request). The four UCI sites are
:data:`heartml.data.download.ALL_SITES`; any other well-formed name is a valid site heartml has
no file for.
"""

from __future__ import annotations

import re

from heartml.errors import UserError

SITE_PATTERN = r"^[a-z0-9_]{1,32}$"
_SITE = re.compile(SITE_PATTERN)


class SiteNameError(UserError):
    """A site name outside :data:`SITE_PATTERN`; the message is one line."""


def check_site(name: str) -> str:
    """``name`` when it is a well-formed site name; else SiteNameError."""
    # fullmatch: "$" alone would also accept a name followed by a newline.
    if not _SITE.fullmatch(name):
        raise SiteNameError(
            f"invalid site name {name!r}: use 1-32 lower-case letters, digits or '_' "
            f"({SITE_PATTERN})"
        )
    return name

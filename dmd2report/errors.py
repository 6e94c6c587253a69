"""Errors the user can fix. The CLI prints them as one line and exits 2; no traceback."""

from __future__ import annotations

import errno
import re

EXIT_USER_ERROR = 2   # every mistake a user can make (Click's own usage errors exit 2 too); 1 is compare's regression

# A full disk or quota, in words: what pyarrow, numpy and torch put in an OSError whose errno they leave unset.
_DISK_FULL_WORDS = re.compile(r"No space left on device|Disk quota exceeded|errno (28|122)\b", re.IGNORECASE)


class UserError(Exception):
    """A problem with the user's input (file, option, config), stated in one line."""


def is_disk_full(e: OSError) -> bool:
    """Whether an OSError means the disk (or the user's quota) is full, by its errno or, where a library left that
    unset, by its words."""
    return e.errno in (errno.ENOSPC, errno.EDQUOT) or bool(_DISK_FULL_WORDS.search(str(e)))

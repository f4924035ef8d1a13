"""Run the nx-27017 test server with two fixes that make it compare and index like MongoDB.

1. Strings that look like dates. nx-27017 0.8 compares a query value such as
   ``"2026-11-26T12:02:39.927Z"`` through SQLite's ``datetime()``, which drops the milliseconds:
   ``{"updatedAt": old}`` in an update then matches any time in the same second, and ``$gt``
   misses later times in that second. MongoDB compares strings as strings; chatdb stores ISO
   strings (as the Node app does) and relies on exact equality (compare-and-set of a chat's
   ``updatedAt``) and exact ranges (scans). Here strings are never treated as dates; BSON dates
   still are.
2. ``_id`` in compound indexes. nx-27017 0.8 builds such an index from
   ``json_extract(data, '_id')``, an invalid JSON path (``_id`` is a column there, not part of
   the document), and from then on every insert into that collection fails with "JSON path error
   near '_id'". Real MongoDB has no such limit, and chatdb keeps ``_id`` in its compound indexes
   so that pages ordered by (time, _id) come straight from an index. Here ``_id`` is left out of
   compound indexes (the rest of the index still helps); results are unchanged, only which index serves them.

Both gaps are listed in tests/README.md; chatdb itself uses neither workaround.

Usage: ``python tests/_nx27017.py [nx-27017 arguments]``.
"""

from __future__ import annotations

import sys
from typing import Any


def _patch() -> None:
    from neosqlite.collection import datetime_utils
    from neosqlite.collection.index_manager import IndexManager

    is_datetime_value = datetime_utils.is_datetime_value

    def strings_are_not_dates(value: Any) -> bool:
        return False if isinstance(value, str) else is_datetime_value(value)

    datetime_utils.is_datetime_value = strings_are_not_dates

    original = IndexManager.create_index

    def create_index(self: Any, key: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(key, list) and len(key) > 1:
            kept = [item for item in key if not (isinstance(item, tuple) and item[0] == "_id")]
            key = kept if len(kept) > 1 else kept[0][0] if kept else key
        return original(self, key, *args, **kwargs)

    IndexManager.create_index = create_index


if __name__ == "__main__":
    _patch()
    from nx_27017.nx_27017 import main

    sys.argv[0] = "nx-27017"
    sys.exit(main())

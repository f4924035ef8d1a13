"""Run the nx-27017 test server with one fix, so chatdb's standard indexes can be created on it.

nx-27017 0.8 builds a compound index with ``_id`` in it from ``json_extract(data, '_id')``, an
invalid JSON path (``_id`` is a column there, not part of the document), and from then on every
insert into that collection fails with "JSON path error near '_id'". Real MongoDB has no such
limit, and chatdb keeps ``_id`` in its compound indexes so that pages ordered by (time, _id) come
straight from an index. Here the ``_id`` field is left out of compound indexes (the rest of the
index still helps); results are unchanged, only which index serves them. See tests/README.md.

Usage: ``python tests/_nx27017.py [nx-27017 arguments]``.
"""

from __future__ import annotations

import sys
from typing import Any


def _patch() -> None:
    from neosqlite.collection.index_manager import IndexManager

    original = IndexManager.create_index

    def create_index(self: Any, key: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(key, list) and len(key) > 1:
            kept = [item for item in key if not (isinstance(item, tuple) and item[0] == "_id")]
            key = kept if len(kept) > 1 else kept[0][0] if kept else key
        return original(self, key, *args, **kwargs)

    IndexManager.create_index = create_index  # type: ignore[method-assign]


if __name__ == "__main__":
    _patch()
    from nx_27017.nx_27017 import main

    sys.argv[0] = "nx-27017"
    sys.exit(main())

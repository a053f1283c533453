"""python -m mldropd.migrations revision "what changed" | check.

See docs/development.md, "Adding a migration".
"""

from __future__ import annotations

import sys

from mldropd.migrations.tools import head_drift, new_revision

USAGE = 'usage: python -m mldropd.migrations revision "message" | check'


def main(argv: list[str]) -> int:
    if argv[:1] == ["check"]:
        diffs = head_drift()
        for diff in diffs:
            print(diff)
        print("records.py and the migrations differ" if diffs else "no schema drift")
        return 1 if diffs else 0
    if argv[:1] == ["revision"] and len(argv) == 2:
        path = new_revision(argv[1])
        print(f"wrote {path}; review it before committing" if path else "no schema change")
        return 0
    print(USAGE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

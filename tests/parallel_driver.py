"""Run several ``ssrseg`` commands one after the other in one process (started by ``torchrun``
in tests/test_data_parallel.py): ``python parallel_driver.py PLAN.json`` where the plan is a
JSON list of argument lists. Exits with the first non-zero status."""

from __future__ import annotations

import json
import sys

from ssrseg.cli import main

if __name__ == "__main__":
    for argv in json.loads(open(sys.argv[1]).read()):
        code = main(argv)
        if code:
            sys.exit(code)

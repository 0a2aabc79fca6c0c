"""Run the ``blackbox`` CLI from a source checkout: ``python cli.py --help``.

The app itself is ``blackbox.cli`` (installed with the package, exposed as the ``blackbox``
console script); this file exists so the repository root carries the entry point the
layout asks for without installing a generic top-level ``cli`` module.
"""

from blackbox.cli import main

if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""The example Django game backend: ``python examples/django_project/manage.py runserver``.

Also ``manage.py gso_analytics report`` and ``manage.py gso_analytics prune``.
"""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "game.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()

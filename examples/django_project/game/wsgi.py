"""WSGI entry point: ``gunicorn -w 3 --preload --chdir examples/django_project game.wsgi``."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "game.settings")

application = get_wsgi_application()

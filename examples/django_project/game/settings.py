"""Settings of the example game: only what gso_analytics and four JSON views need.

Every gso_analytics setting can come from the environment, with laptop defaults: a
SQLite file next to ``manage.py`` and the metrics token ``dev-token`` (change it:
anyone holding it reads your game's numbers).
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-a-secret")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]

INSTALLED_APPS = ["gso_analytics.integrations.django"]
MIDDLEWARE = ["django.middleware.common.CommonMiddleware"]
ROOT_URLCONF = "game.urls"
WSGI_APPLICATION = "game.wsgi.application"
DATABASES: dict = {}  # the example keeps no tables of its own; gso_analytics has its store
USE_TZ = True
TIME_ZONE = "UTC"  # the same days as gso_analytics' default timezone

GSO_ANALYTICS = {
    "STORE": os.environ.get("GSO_ANALYTICS_STORE", f"sqlite:///{BASE_DIR / 'gso_example.db'}"),
    "FLUSH_INTERVAL": os.environ.get("GSO_ANALYTICS_FLUSH_INTERVAL", "10"),
    "METRICS_TOKEN": os.environ.get("GSO_ANALYTICS_METRICS_TOKEN", "dev-token"),
}

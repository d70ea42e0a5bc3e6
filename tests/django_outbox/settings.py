"""Settings: the database is ``OUTBOX_DSN`` (postgresql://USER@HOST:PORT/NAME)."""

import os
from urllib.parse import urlsplit

_db = urlsplit(os.environ["OUTBOX_DSN"])

SECRET_KEY = "tests-only"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1"]
ROOT_URLCONF = "django_outbox.urls"
INSTALLED_APPS = ["django_outbox"]
MIDDLEWARE: list[str] = []
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": _db.path.lstrip("/"),
        "USER": _db.username,
        "PASSWORD": _db.password or "",
        "HOST": _db.hostname,
        "PORT": _db.port,
    }
}

"""Run the test backend under uvicorn on an inherited listening socket:
``python -m django_backend.serve FD`` (cwd tests/, BACKEND_DB set): migrates its SQLite
database, creates the users ann (password ann-pw) and boss (boss-pw, staff), then serves."""

import os
import sys

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "django_backend.settings")

import django  # noqa: E402

django.setup()

import uvicorn  # noqa: E402
from django.contrib.auth.models import User  # noqa: E402
from django.core.asgi import get_asgi_application  # noqa: E402
from django.core.management import call_command  # noqa: E402

call_command("migrate", verbosity=0)
if not User.objects.filter(username="ann").exists():
    User.objects.create_user("ann", password="ann-pw")
    User.objects.create_user("boss", password="boss-pw", is_staff=True)
uvicorn.run(get_asgi_application(), fd=int(sys.argv[1]), log_level="warning", lifespan="off")

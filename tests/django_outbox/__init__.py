"""A small Django project for tests/test_consumer_postgresql.py: a view saves an order and its
outbox row in one ``transaction.atomic()``; PostgreSQL through psycopg (``OUTBOX_DSN``)."""

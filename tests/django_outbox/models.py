"""An order, and the outbox row that publishes it (Centrifugo's outbox table shape)."""

from django.db import models
from django.db.models.functions import Now


class Order(models.Model):
    item = models.CharField(max_length=100)


class Outbox(models.Model):
    """The table hubbub's PostgreSQL consumer reads: id, method, payload (jsonb), partition, created_at."""

    method = models.TextField()
    payload = models.JSONField()
    partition = models.BigIntegerField(default=0)
    created_at = models.DateTimeField(db_default=Now())

    class Meta:
        db_table = "hubbub_outbox"

"""``POST /orders`` with ``{"item": ..., "fail": bool}``: the order and its publication in one
transaction; with ``fail`` the view raises after both inserts, and the transaction rolls back."""

import json

from django.db import transaction
from django.http import HttpRequest, JsonResponse

from .models import Order, Outbox


class Refused(Exception):
    pass


def create_order(request: HttpRequest) -> JsonResponse:
    body = json.loads(request.body)
    try:
        with transaction.atomic():
            order = Order.objects.create(item=body["item"])
            Outbox.objects.create(method="publish",
                                  payload={"channel": "orders", "data": {"id": order.id, "item": order.item}})
            if body.get("fail"):
                raise Refused("refused after both inserts")
    except Refused as exc:
        return JsonResponse({"error": str(exc)}, status=409)
    return JsonResponse({"order": order.id}, status=201)

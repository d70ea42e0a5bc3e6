# views.py
# hubbub's proxy hooks, answered by Django (the requests and answers of Centrifugo's HTTP proxy)
import json

from django.contrib.auth import authenticate, login
from django.http import HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST


@csrf_exempt  # a form the test (or a browser) posts to; a real site keeps CSRF on its login form
@require_POST
def login_view(request):
    user = authenticate(request, username=request.POST["username"], password=request.POST["password"])
    if user is None:
        return HttpResponse(status=401)
    login(request, user)
    return JsonResponse({"user": user.pk})


# hubbub POSTs here with the client's Cookie header: Django's session middleware reads it,
# so request.user is the user who logged in to this site.
@csrf_exempt
@require_POST
def connect(request):
    if not request.user.is_authenticated:
        return JsonResponse({"disconnect": {"code": 4501, "reason": "unauthorized"}})
    return JsonResponse({"result": {
        "user": str(request.user.pk),
        "info": {"name": request.user.username},
        "channels": [f"notifications#{request.user.pk}"],  # a server-side subscription
    }})


@csrf_exempt
@require_POST
def subscribe(request):
    body = json.loads(request.body)
    if body["channel"].startswith("staff:") and not request.user.is_staff:
        return JsonResponse({"error": {"code": 103, "message": "permission denied"}})
    return JsonResponse({"result": {}})


@csrf_exempt
@require_POST
def rpc(request):
    body = json.loads(request.body)
    if body["method"] == "whoami":  # the user as the session cookie says, not as the body says
        return JsonResponse({"result": {"data": {"user": str(request.user.pk), "name": request.user.username}}})
    return JsonResponse({"error": {"code": 104, "message": "method not found"}})

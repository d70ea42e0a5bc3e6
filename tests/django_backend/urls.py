# urls.py
from django.urls import path

from . import views

urlpatterns = [
    path("login", views.login_view),
    path("proxy/connect", views.connect),
    path("proxy/subscribe", views.subscribe),
    path("proxy/rpc", views.rpc),
]

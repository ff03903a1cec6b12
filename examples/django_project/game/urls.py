"""The game's four actions, and the metrics under ``/metrics/``."""

from django.urls import include, path

from . import views

urlpatterns = [
    path("", views.index),
    path("login", views.login),
    path("logout", views.logout),
    path("dungeon", views.dungeon),
    path("purchase", views.purchase),
    path("metrics/", include("gso_analytics.integrations.django.urls")),
]

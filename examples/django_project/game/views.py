"""Login, logout, a dungeon run and a gem purchase, each counted by gso_analytics.

The views take the player's id from a JSON body to stay minimal; a real game takes it
from its own authentication (``str(request.user.pk)``). ``csrf_exempt`` because game
clients post JSON with their own credentials, not HTML forms.
"""

from __future__ import annotations

import json
import os
from typing import Any

from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from gso_analytics.integrations.django import get_analytics

#: Credits a player earns per completed dungeon.
DUNGEON_REWARD = {"crypt": 50, "tower": 120}
#: Gem packs: gems granted and their price in USD cents.
GEM_PACKS = {"gems_100": (100, 199), "gems_550": (550, 999)}


def _ok(**extra: Any) -> JsonResponse:
    # The worker's pid shows which gunicorn worker answered.
    return JsonResponse({"ok": True, "pid": os.getpid(), **extra})


def _refuse(message: str) -> JsonResponse:
    return JsonResponse({"ok": False, "error": message}, status=400)


def _body(request: HttpRequest) -> dict[str, Any]:
    try:
        body = json.loads(request.body or b"{}")
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _user_id(body: dict[str, Any]) -> str | None:
    user_id = body.get("user_id")
    return user_id if isinstance(user_id, str) and user_id else None


@require_GET
def index(request: HttpRequest) -> JsonResponse:
    return _ok(routes=["POST /login", "POST /logout", "POST /dungeon", "POST /purchase"])


@csrf_exempt
@require_POST
def login(request: HttpRequest) -> JsonResponse:
    body = _body(request)
    if (user_id := _user_id(body)) is None:
        return _refuse("user_id (a non-empty string) is required")
    get_analytics().on_login(user_id, body.get("username"))
    return _ok()


@csrf_exempt
@require_POST
def logout(request: HttpRequest) -> JsonResponse:
    if (user_id := _user_id(_body(request))) is None:
        return _refuse("user_id (a non-empty string) is required")
    get_analytics().on_logout(user_id)
    return _ok()


@csrf_exempt
@require_POST
def dungeon(request: HttpRequest) -> JsonResponse:
    body = _body(request)
    if (user_id := _user_id(body)) is None:
        return _refuse("user_id (a non-empty string) is required")
    name = body.get("dungeon", "crypt")
    if name not in DUNGEON_REWARD:
        return _refuse(f"dungeon must be one of {sorted(DUNGEON_REWARD)}")
    analytics = get_analytics()
    analytics.track("dungeon.complete", user_id, {"dungeon": name})
    analytics.track("credits.earn", user_id, {"amount": DUNGEON_REWARD[name]})
    return _ok(credits=DUNGEON_REWARD[name])


@csrf_exempt
@require_POST
def purchase(request: HttpRequest) -> JsonResponse:
    body = _body(request)
    if (user_id := _user_id(body)) is None:
        return _refuse("user_id (a non-empty string) is required")
    pack = body.get("pack")
    if pack not in GEM_PACKS:
        return _refuse(f"pack must be one of {sorted(GEM_PACKS)}")
    gems, cents = GEM_PACKS[pack]
    analytics = get_analytics()
    analytics.track("stripe.payment", user_id, {"amountCents": cents, "pack": pack})
    analytics.track("gems.purchase", user_id, {"gems": gems})
    return _ok(gems=gems)

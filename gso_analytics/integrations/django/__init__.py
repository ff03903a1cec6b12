"""The Django app of gso_analytics (``INSTALLED_APPS``): see :mod:`.apps`.

Views and tasks reach the running library with::

    from gso_analytics.integrations.django import get_analytics

    get_analytics().track("dungeon.complete", str(request.user.pk))
"""

from .apps import get_analytics, serving

__all__ = ["get_analytics", "serving"]

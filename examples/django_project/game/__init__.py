"""A minimal Django game backend counted by gso_analytics (see ``settings.py``)."""

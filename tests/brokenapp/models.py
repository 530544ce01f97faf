"""A model with a broken declaration: only installed by tests/settings_broken.py."""

from django.db import models


class Shelf(models.Model):
    category_id = models.IntegerField()

    class Meta:
        app_label = "brokenapp"
        cache_invalidation = {"tags": ["category:{categry_id}"], "on_field": {}}

"""The app under Django's own ``TestCase``, as users test their code with it: the test's
transaction never commits, and ``captureOnCommitCallbacks(execute=True)`` runs the commit hooks
registered inside its block."""

from __future__ import annotations

from decimal import Decimal

from django.test import TestCase, override_settings

from cache_invalidation import tagged_cache
from testproject.shop.models import Category, Product


@override_settings(CACHE_INVALIDATION={"TRANSPORT": "sync"})
class CaptureOnCommitTests(TestCase):
    @classmethod
    def setUpTestData(cls):
        # Bare fixtures: their events join a batch of the test's transaction, never committed.
        cls.category = Category.objects.create(name="Lamps", slug="lamps")
        cls.product = Product.objects.create(name="Lamp", price=Decimal(10), category=cls.category)

    def test_a_save_inside_the_capture_block_invalidates(self):
        Product.objects.create(name="Shade", price=Decimal(2), category=self.category)  # bare
        tagged_cache.set("summary", "old", tags=[f"product:{self.product.pk}"])
        tagged_cache.set("bystander", "keep", tags=["product:0"])
        with self.captureOnCommitCallbacks(execute=True) as callbacks:
            self.product.price = Decimal(12)
            self.product.save()
        self.assertIsNone(tagged_cache.get("summary"))
        self.assertEqual(tagged_cache.get("bystander"), "keep")
        self.assertTrue(callbacks)

    def test_writes_outside_any_capture_block_publish_nothing(self):
        tagged_cache.set("summary", "old", tags=[f"product:{self.product.pk}"])
        self.product.price = Decimal(13)
        self.product.save()  # in the test's transaction, which never commits
        self.assertEqual(tagged_cache.get("summary"), "old")

    def test_two_capture_blocks_each_publish_their_own_writes(self):
        other = Product.objects.create(name="Bulb", price=Decimal(1), category=self.category)
        for product in (self.product, other):
            tagged_cache.set(f"page-{product.pk}", "old", tags=[f"product:{product.pk}"])
            with self.captureOnCommitCallbacks(execute=True):
                product.price = Decimal(20)
                product.save()
            self.assertIsNone(tagged_cache.get(f"page-{product.pk}"))

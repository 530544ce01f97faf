"""Meta "related": changes cascade to the related rows' declared tags, bounded and acyclic."""

from __future__ import annotations

import pytest
from django.db import models
from django.test.utils import isolate_apps

from cache_invalidation import no_invalidation, registry
from tests.testapp.models import Episode, Issue, Magazine, Publisher, Series

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def issue():
    with no_invalidation():
        acme = Publisher.objects.create(name="Acme")
        other = Publisher.objects.create(name="Other")
        magazine = Magazine.objects.create(publisher=acme, title="Monthly")
        return Issue.objects.create(magazine=magazine, number=1), other


def test_saving_a_child_invalidates_its_parents_tags_two_hops_up(issue, recorder):
    first, _ = issue
    first.number = 2
    first.save()
    magazine = first.magazine
    assert {f"issue:{first.pk}", f"magazine:{magazine.pk}",
            f"publisher:{magazine.publisher_id}", "publisher-name:Acme"} <= recorder.tags


def test_moving_a_child_reaches_the_old_and_the_new_parent(issue, recorder):
    first, other = issue
    magazine = first.magazine
    old_publisher = magazine.publisher_id
    magazine.publisher = other
    magazine.save()
    assert {f"publisher:{old_publisher}", f"publisher:{other.pk}",
            "publisher-name:Acme", "publisher-name:Other"} <= recorder.tags


def test_deleting_a_child_invalidates_the_parent(issue, recorder):
    first, _ = issue
    magazine_pk = first.magazine_id
    first.delete()
    assert f"magazine:{magazine_pk}" in recorder.tags


def test_reverse_relation_reaches_every_child(recorder):
    with no_invalidation():
        series = Series.objects.create(name="S")
        episodes = [Episode.objects.create(series=series, title=str(i)) for i in range(3)]
    series.name = "S2"
    series.save()
    assert {f"episode:{e.pk}" for e in episodes} <= recorder.tags


def test_depth_is_bounded_by_the_setting(issue, recorder, settings):
    settings.CACHE_INVALIDATION = {"TRANSPORT": "sync", "MAX_RELATED_DEPTH": 1}
    first, _ = issue
    first.save()
    assert f"magazine:{first.magazine_id}" in recorder.tags
    assert not any(t.startswith("publisher") for t in recorder.tags)


def test_related_only_key_templates_need_no_query(issue, django_assert_num_queries):
    first, _ = issue
    issue = Issue.objects.get(pk=first.pk)
    # Issue -> Magazine: magazine's templates use only {pk}: no query. Magazine -> Publisher:
    # publisher-name needs the name: one query. Plus the UPDATE itself.
    with django_assert_num_queries(3):
        issue.save()


@isolate_apps("tests.testapp")
def test_cycles_are_refused_at_startup():
    class Left(models.Model):
        class Meta:
            app_label = "testapp"
            cache_invalidation = {"tags": ["l:{pk}"], "related": ["rights"]}

    class Right(models.Model):
        left = models.ForeignKey(Left, on_delete=models.CASCADE, related_name="rights")

        class Meta:
            app_label = "testapp"
            cache_invalidation = {"tags": ["r:{pk}"], "related": ["left"]}

    problems = registry.build([Left, Right]).problems
    assert [p.id for p in problems] == ["cache_invalidation.E008"]
    assert problems[0].msg == (
        "Left.Meta.cache_invalidation: related relations form a cycle: "
        "testapp.Left -> testapp.Right -> testapp.Left."
    )


@isolate_apps("tests.testapp")
def test_bad_related_entries_are_reported():
    class Owner(models.Model):
        class Meta:
            app_label = "testapp"

    class Pet(models.Model):
        owner = models.ForeignKey(Owner, on_delete=models.CASCADE)
        name = models.CharField(max_length=10)

        class Meta:
            app_label = "testapp"
            cache_invalidation = {"tags": ["pet:{pk}"], "related": ["ownr", "name"]}

    class Cat(models.Model):
        owner = models.ForeignKey(Owner, on_delete=models.CASCADE, related_name="cats")

        class Meta:
            app_label = "testapp"
            cache_invalidation = {"tags": ["cat:{pk}"], "related": ["owner"]}

    problems = registry.build([Owner, Pet, Cat]).problems
    assert [(p.id, p.msg) for p in problems] == [
        ("cache_invalidation.E007",
         "Pet.Meta.cache_invalidation: related names 'ownr', which is no relation of "
         "testapp.Pet."),
        ("cache_invalidation.E007",
         "Pet.Meta.cache_invalidation: related names 'name', which is a plain field of "
         "testapp.Pet, not a relation."),
        ("cache_invalidation.E007",
         "Cat.Meta.cache_invalidation: related names 'owner', which points at testapp.Owner, "
         "a model with no cache_invalidation declaration."),
    ]
    assert problems[0].hint.startswith("Did you mean 'owner'?")

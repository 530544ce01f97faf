"""Models for the edge cases the shop does not have: abstract bases, proxies, inheritance."""

import uuid

from django.db import models


class Stamped(models.Model):
    title = models.CharField(max_length=50)

    class Meta:
        abstract = True
        cache_invalidation = {"tags": ["stamped:{pk}", "title:{title}"]}


class Article(Stamped):
    """Inherits the abstract base's Meta (and its declaration) without a Meta of its own."""

    section = models.CharField(max_length=20, default="news")


class Note(Stamped):
    """Extends the inherited declaration through Meta inheritance."""

    class Meta(Stamped.Meta):
        cache_invalidation = {**Stamped.Meta.cache_invalidation, "keys": ["note:{pk}:body"]}


class Book(models.Model):
    title = models.CharField(max_length=50)
    shelf = models.IntegerField(default=1)

    class Meta:
        cache_invalidation = {"tags": ["book:{pk}", "shelf:{shelf}"]}


class PlainBookProxy(Book):
    class Meta:
        proxy = True


class LabelledBookProxy(Book):
    class Meta:
        proxy = True
        cache_invalidation = {"tags": ["label:{pk}"]}


class Ebook(Book):
    """Multi-table child: saving it must also invalidate the parent Book's tags."""

    url = models.CharField(max_length=100, default="")

    class Meta:
        cache_invalidation = {"tags": ["ebook:{pk}"]}


class Gadget(models.Model):
    """Primary key with a default: a new instance always INSERTs."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4)
    kind = models.CharField(max_length=20)

    class Meta:
        cache_invalidation = {"tags": ["gadget:{pk}", "kind:{kind}"]}


class Undeclared(models.Model):
    name = models.CharField(max_length=20)


class Publisher(models.Model):
    name = models.CharField(max_length=50)

    class Meta:
        cache_invalidation = {"tags": ["publisher:{pk}", "publisher-name:{name}"]}


class Magazine(models.Model):
    publisher = models.ForeignKey(Publisher, on_delete=models.CASCADE)
    title = models.CharField(max_length=50)

    class Meta:
        cache_invalidation = {"tags": ["magazine:{pk}"], "related": ["publisher"]}


class Issue(models.Model):
    """Issue -> Magazine -> Publisher: a two-hop cascade."""

    magazine = models.ForeignKey(Magazine, on_delete=models.CASCADE)
    number = models.IntegerField()

    class Meta:
        cache_invalidation = {"tags": ["issue:{pk}"], "related": ["magazine"]}


class Series(models.Model):
    name = models.CharField(max_length=50)

    class Meta:
        cache_invalidation = {"tags": ["series:{pk}"], "related": ["episodes"]}


class Episode(models.Model):
    series = models.ForeignKey(Series, on_delete=models.CASCADE, related_name="episodes")
    title = models.CharField(max_length=50)

    class Meta:
        cache_invalidation = {"tags": ["episode:{pk}"]}


# The capture scenarios (tests/test_capture_tables.py): joins the compiler adds, combined and
# sub-queries, many-to-many through tables (auto-created and explicit), a declared proxy over
# an undeclared concrete model, fixtures.


class Owner(models.Model):
    username = models.CharField(max_length=50)

    class Meta:
        cache_invalidation = {"tags": ["owner:{pk}"]}


class Item(models.Model):
    owner = models.ForeignKey(Owner, on_delete=models.CASCADE, related_name="items")
    name = models.CharField(max_length=50)

    class Meta:
        ordering = ["pk"]
        cache_invalidation = {"tags": ["item:{pk}"]}


class Card(models.Model):
    """A reverse one-to-one of Owner."""

    owner = models.OneToOneField(Owner, on_delete=models.CASCADE, related_name="card")
    number = models.CharField(max_length=20)

    class Meta:
        cache_invalidation = {"tags": ["card:{pk}"]}


class Label(models.Model):
    name = models.CharField(max_length=50)

    class Meta:
        ordering = ["pk"]
        cache_invalidation = {"tags": ["label:{pk}"]}


class Brand(models.Model):
    name = models.CharField(max_length=50)
    labels = models.ManyToManyField(Label, related_name="brands", blank=True)

    class Meta:
        cache_invalidation = {"tags": ["brand:{pk}"], "on_fields": {"labels": ["brand:{pk}:labels"]}}


class Course(models.Model):
    title = models.CharField(max_length=50)
    students = models.ManyToManyField(Owner, through="Enrollment", related_name="courses")

    class Meta:
        cache_invalidation = {
            "tags": ["course:{pk}"],
            "on_fields": {"students": ["course:{pk}:students"]},
        }


class Enrollment(models.Model):
    """An explicit through model that declares nothing."""

    course = models.ForeignKey(Course, on_delete=models.CASCADE)
    owner = models.ForeignKey(Owner, on_delete=models.CASCADE)
    grade = models.IntegerField(default=0)


class Widget(models.Model):
    """Undeclared: its declared proxy is what the cache reads through."""

    name = models.CharField(max_length=50)


class TrackedWidget(Widget):
    class Meta:
        proxy = True
        cache_invalidation = {"tags": ["widget:{pk}"]}


class Author(models.Model):
    name = models.CharField(max_length=50)


class Novel(models.Model):
    """A nullable foreign key: an orphan's template renders as ``author:None:books``."""

    title = models.CharField(max_length=50)
    author = models.ForeignKey(Author, null=True, on_delete=models.SET_NULL)

    class Meta:
        cache_invalidation = {"tags": ["novel:{pk}", "author:{author_id}:books"]}

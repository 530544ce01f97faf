"""The Meta declaration: validation at startup, inheritance, proxies, migrations."""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command
from django.db import models
from django.db.migrations.state import ModelState
from django.test.utils import isolate_apps

from cache_invalidation import checks, registry
from tests.testapp.models import (
    Article,
    Book,
    Ebook,
    LabelledBookProxy,
    Note,
    PlainBookProxy,
)


def sources(templates):
    return [t.source for t in templates]


def problems_for(model):
    return registry.build([model]).problems


@isolate_apps("tests.testapp")
def test_unknown_option_is_reported_with_a_suggestion():
    class Thing(models.Model):
        name = models.CharField(max_length=10)

        class Meta:
            app_label = "testapp"
            cache_invalidation = {"tag": ["thing:{pk}"]}

    [problem] = problems_for(Thing)
    assert problem.id == "cache_invalidation.E002"
    assert problem.msg == "Thing.Meta.cache_invalidation: unknown option 'tag'."
    assert problem.hint == "Did you mean 'tags'? Valid options are: tags, keys, on_fields, related."


@isolate_apps("tests.testapp")
def test_template_naming_an_unknown_field_suggests_the_right_one():
    class Widget(models.Model):
        category_id = models.IntegerField()

        class Meta:
            app_label = "testapp"
            cache_invalidation = {"tags": ["category:{categry_id}"]}

    [problem] = problems_for(Widget)
    assert problem.id == "cache_invalidation.E004"
    assert problem.msg == (
        "Widget.Meta.cache_invalidation: tag template 'category:{categry_id}' names no field "
        "of testapp.Widget."
    )
    assert problem.hint.startswith("Did you mean 'category_id'?")


@isolate_apps("tests.testapp")
@pytest.mark.parametrize(
    ("template", "fragment"),
    [
        ("{category.name}", "attribute or index access '{category.name}'"),
        ("{tags[0]}", "attribute or index access '{tags[0]}'"),
        ("{0}", "positional placeholder '{0}'"),
        ("{}", "positional placeholder '{}'"),
        ("{pk!r}", "conversion or format spec"),
        ("{pk:>5}", "conversion or format spec"),
        ("oops{", "is not a valid template"),
    ],
)
def test_unsafe_templates_are_refused(template, fragment):
    class Gizmo(models.Model):
        class Meta:
            app_label = "testapp"
            cache_invalidation = {"keys": [template]}

    [problem] = problems_for(Gizmo)
    assert problem.id == "cache_invalidation.E005"
    assert problem.msg.startswith("Gizmo.Meta.cache_invalidation: key template ")
    assert fragment in problem.msg


@isolate_apps("tests.testapp")
def test_relation_names_must_be_written_as_their_stored_key():
    class Parent(models.Model):
        class Meta:
            app_label = "testapp"

    class Child(models.Model):
        parent = models.ForeignKey(Parent, on_delete=models.CASCADE)

        class Meta:
            app_label = "testapp"
            cache_invalidation = {"tags": ["parent:{parent}"]}

    [problem] = problems_for(Child)
    assert problem.id == "cache_invalidation.E004"
    assert "names the relation 'parent'" in problem.msg
    assert problem.hint == "Use '{parent_id}' (the stored key) instead of '{parent}'."


@isolate_apps("tests.testapp")
@pytest.mark.parametrize(
    ("declaration", "problem_id", "fragment"),
    [
        (["product:{pk}"], "cache_invalidation.E001", "must be a dict, not list"),
        ({"tags": "product:{pk}"}, "cache_invalidation.E003", "'tags' must be a list of strings"),
        ({"keys": [3]}, "cache_invalidation.E003", "must contain only strings, found int 3"),
        ({"on_fields": ["price"]}, "cache_invalidation.E003", "'on_fields' must be a dict"),
        ({"on_fields": {"prise": ["x"]}}, "cache_invalidation.E006", "on_fields names 'prise'"),
    ],
)
def test_wrong_shapes_are_reported(declaration, problem_id, fragment):
    class Item(models.Model):
        price = models.IntegerField()

        class Meta:
            app_label = "testapp"
            cache_invalidation = declaration

    found = problems_for(Item)
    assert [p.id for p in found] == [problem_id]
    assert fragment in found[0].msg


@isolate_apps("tests.testapp")
def test_a_broken_declaration_gets_no_policy():
    class Broken(models.Model):
        class Meta:
            app_label = "testapp"
            cache_invalidation = {"tags": ["ok:{pk}", "bad:{nope}"]}

    built = registry.build([Broken])
    assert built.policies == {}
    assert [p.id for p in built.problems] == ["cache_invalidation.E004"]


def test_system_check_reports_declaration_problems_with_ids(monkeypatch):
    bad = registry.Problem("cache_invalidation.E004", Book, "Book.Meta.cache_invalidation: x", "h")
    monkeypatch.setattr(registry.registry, "problems", [bad])
    [error] = checks.check_declarations()
    assert (error.id, error.msg, error.hint, error.obj) == (
        "cache_invalidation.E004", "Book.Meta.cache_invalidation: x", "h", Book
    )


def test_abstract_base_declaration_is_inherited():
    policy = registry.registry.get(Article)
    assert sources(policy.tags) == ["stamped:{pk}", "title:{title}"]
    note = registry.registry.get(Note)
    assert sources(note.keys) == ["note:{pk}:body"]


def test_proxies_and_children_apply_their_parents_rules():
    assert sources(registry.registry.get(PlainBookProxy).tags) == ["book:{pk}", "shelf:{shelf}"]
    assert sources(registry.registry.get(LabelledBookProxy).tags) == [
        "label:{pk}", "book:{pk}", "shelf:{shelf}"
    ]
    assert sources(registry.registry.get(Ebook).tags) == ["ebook:{pk}", "book:{pk}", "shelf:{shelf}"]


def test_policies_are_frozen():
    policy = registry.registry.get(Book)
    with pytest.raises(AttributeError):
        policy.tags = ()  # type: ignore[misc]


@pytest.mark.django_db
def test_option_never_reaches_migrations():
    for model in (Book, Note, Article, LabelledBookProxy):
        assert "cache_invalidation" not in ModelState.from_model(model).options
    out = io.StringIO()
    call_command("makemigrations", "--check", "--dry-run", stdout=out)
    assert "No changes detected" in out.getvalue()

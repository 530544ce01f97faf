from __future__ import annotations

from django.contrib import admin
from django.db.models import Count, QuerySet
from django.http import HttpRequest

from .models import Category, Product, Profile, Review, Tag


@admin.register(Category)
class CategoryAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "product_count"]
    search_fields = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}

    def get_queryset(self, request: HttpRequest) -> QuerySet[Category]:
        return super().get_queryset(request).annotate(product_count=Count("products"))

    @admin.display(description="products", ordering="product_count")
    def product_count(self, obj: Category) -> int:
        return obj.product_count  # type: ignore[attr-defined]


@admin.register(Tag)
class TagAdmin(admin.ModelAdmin):
    list_display = ["name"]
    search_fields = ["name"]


class ReviewInline(admin.TabularInline):
    model = Review
    extra = 0


@admin.register(Product)
class ProductAdmin(admin.ModelAdmin):
    list_display = ["name", "category", "price"]
    # Editing prices from the list shows the on_fields rule at work: the pricing box refreshes.
    list_editable = ["price"]
    list_filter = ["category", "tags"]
    list_select_related = ["category"]
    search_fields = ["name", "description"]
    filter_horizontal = ["tags"]
    inlines = [ReviewInline]


@admin.register(Review)
class ReviewAdmin(admin.ModelAdmin):
    list_display = ["product", "rating", "text"]
    list_filter = ["rating", "product__category"]
    list_select_related = ["product"]
    search_fields = ["text", "product__name"]
    autocomplete_fields = ["product"]


@admin.register(Profile)
class ProfileAdmin(admin.ModelAdmin):
    list_display = ["display_name", "user"]
    list_select_related = ["user"]
    search_fields = ["display_name", "user__username", "user__email"]
    autocomplete_fields = ["user"]

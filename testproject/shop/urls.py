from django.urls import path

from . import views

app_name = "shop"

urlpatterns = [
    path("", views.home, name="home"),
    path("categories/<int:pk>/", views.category_detail, name="category"),
    path("products/<int:pk>/", views.product_detail, name="product"),
    path("api/products/<int:pk>/", views.product_api, name="product-api"),
]

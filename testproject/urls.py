from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    # /cache-invalidation/metrics/: Prometheus text, for staff users and METRICS_TOKEN holders.
    path("cache-invalidation/", include("cache_invalidation.urls")),
    path("", include("testproject.shop.urls")),
]

"""The site's icon: browsers find it, and their automatic request is no 404."""

import urllib.request

import pytest


@pytest.mark.django_db
def test_favicon_ico_leads_to_the_icon(live_server):
    """Browsers ask for /favicon.ico by themselves on a first visit; it must
    answer (through a redirect) with the icon, not a 404 warning in the log."""
    with urllib.request.urlopen(live_server.url + "/favicon.ico", timeout=10) as response:
        assert response.status == 200
        assert response.url.endswith("/static/favicon.svg")
        assert response.headers["Content-Type"] == "image/svg+xml"
        assert response.read().startswith(b"<svg")


@pytest.mark.django_db
def test_pages_link_the_icon(client):
    """Every page built on base.html (here the login page) names the icon."""
    page = client.get("/accounts/login/").content.decode()
    assert '<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">' in page

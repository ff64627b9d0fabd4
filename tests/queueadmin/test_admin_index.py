"""The Django admin says it is chatsite's and leads to the queue console."""

import re

import pytest


@pytest.mark.django_db
def test_the_admin_index_links_to_the_console_under_a_chatsite_header(client, staff):
    """Staff see "chatsite" as the admin's header and title, a link to the
    queue console above the apps, and the apps still listed below it; the link works."""
    client.force_login(staff)
    page = client.get("/admin/").content.decode()
    assert re.search(r'<div id="site-name"><a href="/admin/">chatsite</a></div>', page)
    assert re.search(r"<title>[^<]*\| chatsite</title>", page)
    assert '<a href="/admin/queue/">Queue console</a>' in page
    assert page.index("Queue console") < page.index("Generation settings")
    assert client.get("/admin/queue/").status_code == 200


@pytest.mark.django_db
def test_the_admin_login_page_says_chatsite(client):
    """The admin's login page, seen before logging in, carries the header too."""
    page = client.get("/admin/login/").content.decode()
    assert '<div id="site-name"><a href="/admin/">chatsite</a></div>' in page
    assert "Django administration" not in page

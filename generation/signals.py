"""Security log lines for logins, with the client address Django sees.

Behind nginx, that address is the browser's only if daphne runs with
--proxy-headers and nginx overwrites X-Forwarded-For; these lines make a
wrong proxy set-up visible (every login would come from 127.0.0.1).
"""

import logging

from django.contrib.auth.signals import user_logged_in, user_login_failed
from django.dispatch import receiver

logger = logging.getLogger("chatsite.security")


def client_address(request) -> str:
    """The client address of a request, as Django sees it."""
    return request.META.get("REMOTE_ADDR", "?") if request is not None else "?"


@receiver(user_logged_in)
def log_login(sender, request, user, **kwargs):
    """Log each successful login with its client address."""
    logger.info("Login of %s from %s", user.get_username(), client_address(request))


@receiver(user_login_failed)
def log_login_failure(sender, credentials, request=None, **kwargs):
    """Log each failed login with the attempted username and client address."""
    logger.warning("Failed login for %r from %s", credentials.get("username", ""), client_address(request))

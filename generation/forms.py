"""Forms of the chat's HTML pages (the chat itself talks JSON and WebSocket)."""

from django import forms
from django.utils.translation import gettext_lazy as _

from generation.models import ApiKey


class ApiKeyCreateForm(forms.Form):
    """The name of a new API key, as typed on /keys/.

    Django's CharField refuses NUL and counts code points like every other
    limit (generation.text); the service checks the name again, as it does for
    the command line, and the view shows its refusal as this form's error.
    """

    name = forms.CharField(
        max_length=ApiKey._meta.get_field("name").max_length,
        label=_("Name"),
        help_text=_("What will use the key, such as “Open WebUI” or “laptop script”."),
        widget=forms.TextInput(attrs={"autocomplete": "off", "spellcheck": "false"}),
    )

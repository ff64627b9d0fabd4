"""The console's settings form."""

from django import forms
from django.utils.translation import gettext_lazy as _

from generation.runtime.context import backend_context_tokens
from generation.runtime.types import Limits
from queueadmin.models import LIMIT_FIELDS, GenerationSettings, max_new_tokens_bound_text


class GenerationSettingsForm(forms.ModelForm):
    """The five live limits, validated by the model's bounds (1 to a sane
    maximum, and max_new_tokens against the model's context, see
    `GenerationSettings.clean`); the help text states the model's bound.

    Only validates: saving goes through `services.generation_settings_update`,
    which audits and broadcasts the change.
    """

    class Meta:
        model = GenerationSettings
        fields = LIMIT_FIELDS
        # The model's field names, in the reader's language.
        labels = {
            "max_concurrency": _("max concurrency"),
            "max_queue_size": _("max queue size"),
            "max_active_per_user": _("max active per user"),
            "max_active_api_per_user": _("max active API requests per user"),
            "queue_timeout_s": _("queue timeout (s)"),
            "max_new_tokens": _("max new tokens"),
        }

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        context = backend_context_tokens()
        if context and "max_new_tokens" in self.fields:
            self.fields["max_new_tokens"].help_text = _("Longest reply. %(bound)s") % {
                "bound": max_new_tokens_bound_text(context)
            }

    def limits(self) -> Limits:
        """The validated limits as one value (call after `is_valid()`)."""
        return Limits(**{name: self.cleaned_data[name] for name in LIMIT_FIELDS})

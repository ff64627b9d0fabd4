"""The console's settings form."""

from django import forms

from queueadmin.models import LIMIT_FIELDS, GenerationSettings


class GenerationSettingsForm(forms.ModelForm):
    """The five live limits, validated by the model's bounds (1 to a sane maximum).

    Only validates: saving goes through `services.generation_settings_update`,
    which audits and broadcasts the change.
    """

    class Meta:
        model = GenerationSettings
        fields = LIMIT_FIELDS

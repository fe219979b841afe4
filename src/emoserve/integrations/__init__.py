"""Ready-made integrations: a Rasa custom action (`emoserve.integrations.rasa`). The Home Assistant custom
integration is not in the package: it sits at the repository's root (`custom_components/emoserve`, HACS layout)."""

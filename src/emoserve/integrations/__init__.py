"""Ready-made integrations: a Rasa custom action (`emoserve.integrations.rasa`) and a Home Assistant custom
integration (`home_assistant/custom_components/emoserve`, copied into Home Assistant's config folder)."""

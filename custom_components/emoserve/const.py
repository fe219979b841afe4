"""Names shared by the emoserve integration's modules."""

DOMAIN = "emoserve"
CONF_URL = "url"
CONF_API_KEY = "api_key"
DEFAULT_URL = "http://127.0.0.1:8000"
EVENT_RESULT = "emoserve_result"
SERVICE_ANALYZE = "analyze"
ATTR_CONFIG_ENTRY_ID = "config_entry_id"
ATTR_FILE = "file"
ATTR_URL = "url"
MAX_AUDIO_BYTES = 10 * 1024 * 1024  # the service's single-request limit (EMOSERVE_MAX_BYTES)
TIMEOUT_S = 60
RETRIES = 3

"""The HTTP service (FastAPI): thin routes over the engine; errors mapped once in errors.py."""

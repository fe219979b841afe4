"""emoserve on a Ray cluster (the optional `emoserve[ray]` extra): Ray Data for corpora (`corpus`).

Nothing here imports Ray at import time: without the extra, emoserve works as before and only
the `--ray` options say what to install.
"""

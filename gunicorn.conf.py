"""Gunicorn settings for the screening service (placeholder values; tuned by measurement later)."""

import os

bind = f"{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
threads = 1
timeout = 60
preload_app = False  # TensorFlow hangs in children forked after it initialised
raw_env = ["TF_INTRA_OP_THREADS=1", "TF_INTER_OP_THREADS=1", "TF_CPP_MIN_LOG_LEVEL=2"]

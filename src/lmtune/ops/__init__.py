"""Operations after training: serving over HTTP (serve.py and its serve_* helpers) and
monitoring a released model (monitor.py, profile.py, drift.py)."""

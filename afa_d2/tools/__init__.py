"""Command-line tools of afa_d2 (``python -m afa_d2.tools.<name>``)."""

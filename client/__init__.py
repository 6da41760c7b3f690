"""Client SDK and `caption` CLI; installs without torch."""

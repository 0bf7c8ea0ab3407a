"""`tagger run`: the long-running service, its folder watch, work queue and systemd link."""

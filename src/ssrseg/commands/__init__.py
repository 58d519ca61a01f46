"""Subcommands of ``ssrseg``; each module keeps heavy imports inside ``run``."""

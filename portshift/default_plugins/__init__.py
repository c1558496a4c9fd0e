"""Plugins that ship with the core: the ``local`` sink, the ``example`` source, the ``sha256sum`` manifest."""

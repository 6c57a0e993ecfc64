"""inferd backends: one small interface, found through a registry (see ``registry``)."""

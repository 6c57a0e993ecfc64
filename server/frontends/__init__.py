"""Front ends: thin translators between a wire protocol and the core."""

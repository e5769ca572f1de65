"""freezebench's first-party plugins, registered through the ``freezebench`` entry-point group."""

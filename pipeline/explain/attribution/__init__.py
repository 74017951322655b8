"""Attribution: which pixels a class score depends on. One module per method, each a subclass of
``base.Attribution`` with a config of its own in ``conf/attribution/<name>.yaml``;
``registry.factory`` builds a method from that file by name (or from any ``_target_`` mapping)."""

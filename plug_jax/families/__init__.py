"""One sub-package per AliceMind family."""

"""One page per analysis family: a ``pn.viewable.Viewer`` that lays out widgets and views."""

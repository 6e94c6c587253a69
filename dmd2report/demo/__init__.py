"""The demo: a procedural dataset and the small generator trained on it, so a newcomer gets a real report."""

"""Bundled data shipped in the wheel as dmd2report.bundled (the demo generator weights)."""

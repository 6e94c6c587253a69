"""dmd2report: static reports on where a DMD2 one-step generator lands among real data."""

__version__ = "0.1.0"

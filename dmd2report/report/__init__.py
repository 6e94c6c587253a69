"""The static site: ReportData -> Bokeh figures, sprite sheets and Jinja pages."""

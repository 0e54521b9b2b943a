"""The HTML of `stride report`: escaping, page layout, and the page's own CSS and JavaScript."""

from stride.report_page.page import ExampleView, LDSView, QueryView, ReportData, render_page

__all__ = ["ExampleView", "LDSView", "QueryView", "ReportData", "render_page"]

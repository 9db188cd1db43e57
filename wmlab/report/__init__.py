"""The self-contained HTML report of a run."""

from wmlab.report.html import build_report, register_section, registered_sections, unregister_section

__all__ = ["build_report", "register_section", "registered_sections", "unregister_section"]

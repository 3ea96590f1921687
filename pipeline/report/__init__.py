"""``pgpig-data report``: one self-contained HTML page (and ``report.json``) of what extract and pair produced.

``run`` drives it: the numbers (``stats``), the image tiles (``pictures``), the plots (``plots``), then the page
(``page``). ``docs/report.md`` describes every section of the page.
"""

from pipeline.report.run import REPORT_VERSION, ReportConfig, json_path, run_report

__all__ = ["REPORT_VERSION", "ReportConfig", "json_path", "run_report"]

"""Inline styles of components (they render in shadow DOM, where the page's CSS does not reach)."""

NOTE = {"color": "#5f6b77", "font-size": "0.9em"}
SUMMARY = {
    "background": "#f1f5f9",
    "border-left": "4px solid #4477AA",
    "border-radius": "4px",
    "padding": "0 0.6em",
}
RUNNER = {"color": "#5f6b77", "font-size": "0.85em", "border-top": "1px solid #dde3e9"}
HEAD = {"color": "#1f4e79"}

#: the headings of Markdown panes, one size wherever a pane is attached: Panel gives a pane
#: attached after the page's first render Bootstrap's whole stylesheet, one rendered with the page
#: a lighter set, and "####" came out at 24 px in one and 12 px in the other
HEADINGS = """
:host h2 { font-size: 1.75rem; font-weight: 500; line-height: 1.2; margin: 0.3em 0 0.4em; }
:host h4 { font-size: 0.95rem; font-weight: 700; line-height: 1.3; margin: 0.5em 0 0.25em; }
"""

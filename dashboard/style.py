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
